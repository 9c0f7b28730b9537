"""The web server's safety: where it listens, the access token, and the checks every request passes.

- `--serve [HOST:]PORT` binds 127.0.0.1 unless a host is given (0.0.0.0 for every interface).
- Every request needs the token: `Authorization: Bearer TOKEN` (API clients) or the cookie the page
  sets when it is opened through the printed link `http://HOST:PORT/?token=TOKEN`; compared with
  `hmac.compare_digest` (constant time). A missing or wrong token is a 401, logged at most once per
  `LOG_EVERY_S` (with how many were refused meanwhile).
- State changes are POST only, with a JSON body of at most `BODY_LIMIT` bytes (413 beyond), and from
  the page's own origin: a browser request (cookie) must carry an `Origin` equal to the server's.
"""
from __future__ import annotations

import hmac
import re
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Optional, Tuple

from ..common import StreamError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080
TOKEN_MIN = 16
TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-]+$")  # URL-safe (secrets.token_urlsafe's alphabet)
COOKIE = "latent_replay_token"
BODY_LIMIT = 4096
LOG_EVERY_S = 10.0


def parse_address(spec: str) -> Tuple[str, int]:
    """'[HOST:]PORT' -> (host, port); HOST defaults to 127.0.0.1; PORT 0 picks a free port."""
    spec = str(spec).strip()
    host, sep, port = spec.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise StreamError(f"--serve {spec}: give [HOST:]PORT with a port 0..65535, e.g. --serve 8080 or "
                          f"--serve 0.0.0.0:8080")
    if not re.match(r"^[A-Za-z0-9.\-:]+$", host):
        raise StreamError(f"--serve {spec}: {host!r} is not a host name or IP address")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, opened before anything is written (a port in use fails at start-up)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise StreamError(f"--serve: cannot resolve {host!r}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise StreamError(f"--serve {host}:{port}: cannot listen there ({e.strerror or e})") from None
    sock.setblocking(False)
    return sock


def load_token(path: Optional[str]) -> str:
    """The token of --token-file (its first line), or a new random one."""
    if not path:
        return secrets.token_urlsafe(24)  # 32 characters
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise StreamError(f"--token-file {path}: cannot read it ({e.strerror or e}); create one with: python3 -c "
                          f"\"import secrets; print(secrets.token_urlsafe(24))\" > {path}") from None
    token = (text.splitlines() or [""])[0].strip()
    if len(token) < TOKEN_MIN or not TOKEN_RE.match(token):
        raise StreamError(f"--token-file {path}: the token must be at least {TOKEN_MIN} URL-safe characters "
                          f"(A-Z a-z 0-9 - _) on its first line")
    return token


def same_token(given: Optional[str], token: str) -> bool:
    """Constant-time comparison (a wrong token's length or prefix tells nothing by the time taken)."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


class RefusalLog:
    """One stderr line per LOG_EVERY_S at most about refused requests: a scanner cannot flood the log."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last = -1e9
        self._suppressed = 0

    def refused(self, peer: str, path: str, why: str) -> bool:
        """Returns whether a line was written."""
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._suppressed += 1
            return False
        more = f" ({self._suppressed} more refused since the last line)" if self._suppressed else ""
        print(f"web: refused {path} from {peer}: {why}{more}", file=sys.stderr, flush=True)
        self._last, self._suppressed = now, 0
        return True


def cross_origin(origin: Optional[str], fetch_site: Optional[str], scheme: str, host: str,
                 by_cookie: bool) -> Optional[str]:
    """Why a state-changing request is refused as not from the page's own origin, or None."""
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site {fetch_site}"
    if origin is not None:
        if origin != f"{scheme}://{host}":
            return f"Origin {origin} is not {scheme}://{host}"
        return None
    if by_cookie:  # browsers send Origin with every POST: a cookie without one is not our page
        return "a request with the cookie but no Origin"
    return None
