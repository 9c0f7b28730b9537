"""`stream --serve` wired into a session: the checks before anything is written, and the running server."""
from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..common import StreamError
from . import auth


@dataclass
class Listening:
    """What `prepare` checked and opened: the bound socket, the token, and where the page is."""

    sock: socket.socket
    token: str
    host: str
    port: int
    token_file: Optional[str]  # the token is not printed when it comes from a file

    def link(self) -> str:
        host = socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        token = f"<the token in {self.token_file}>" if self.token_file else self.token
        return f"http://{host}:{self.port}/?token={token}"

    def close(self) -> None:
        self.sock.close()


def prepare(opts: Any) -> Optional[Listening]:
    """For --serve: aiohttp installed, the address, the token, and the port bound (a port in use is a
    one-line error before any export). None without --serve."""
    if not opts.serve:
        return None
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise StreamError("--serve needs the web extra: pip install \"latent-replay[web]\" (aiohttp)") from None
    if not 0.1 <= opts.serve_fps <= 60:
        raise StreamError("--serve-fps must be 0.1..60")
    host, port = auth.parse_address(opts.serve)
    token = auth.load_token(opts.token_file)
    sock = auth.bind(host, port)
    return Listening(sock, token, host, int(sock.getsockname()[1]), opts.token_file)


class Serving:
    """The running server of a session: `start` before the loop, `stop` after the final save."""

    def __init__(self, listening: Listening, app: Any, opts: Any, artifacts: Path) -> None:
        from .hub import Hub
        from .server import WebServer

        self.listening = listening
        self.hub = Hub(opts.serve_fps)
        app.hub = self.hub
        learner_dir = Path(opts.state) / "learner"

        def model_bytes() -> bytes:
            from ...export_model import learned_model

            if not (learner_dir / "state.json").is_file():
                raise StreamError("nothing was learned and saved yet")
            return learned_model(Path(artifacts), learner_dir)[0].SerializeToString()

        self.server = WebServer(self.hub, app.control, app.events, listening.sock, listening.token, model_bytes)

    def start(self) -> None:
        self.server.start()
        where = self.listening.link()
        print(f"serving the live view at {where}", file=sys.stderr, flush=True)
        if self.listening.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"web: listening on {self.listening.host}:{self.listening.port}: anyone who can reach it needs "
                  f"the token", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self.server.stop()
        self.listening.close()
