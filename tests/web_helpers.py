"""A real `stream --serve` / `serve` process for the web tests, and small HTTP helpers.

Every process is started on port 0 (a free port, read back from the printed link) and stopped by
`stop` (SIGTERM, wait, SIGKILL): the fixtures call it in their finalizers, so no server outlives
its test.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

WRAPPER = Path(__file__).resolve().parent / "web_camera.py"
LINK = re.compile(r"serving the live view at (http://[^/\s]+)/\?token=(\S+)")


class ServerProc:
    """`python tests/web_camera.py ARGS` (the real CLI; `--source camera` is the steered camera)."""

    def __init__(self, args: List[str], work: Path, camera: int = 0, fps: float = 30, start_s: float = 120) -> None:
        self.work = work
        self.camera_file = work / "camera.txt"
        self.show(camera)
        env = dict(os.environ, CAMERA_FILE=str(self.camera_file), CAMERA_FPS=str(fps), PYTHONUNBUFFERED="1")
        self.lines: List[str] = []
        self.popen = subprocess.Popen([sys.executable, str(WRAPPER)] + args, cwd=str(work), env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.base, self.token = self._wait_link(start_s)

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def _wait_link(self, limit_s: float) -> Tuple[str, str]:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = LINK.search(line)
                if m:
                    return m.group(1), m.group(2)
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise AssertionError("the server did not start:\n" + self.output())

    def output(self) -> str:
        return "\n".join(self.lines)

    def show(self, obj: int) -> None:
        """Put object `obj` in front of the camera."""
        self.camera_file.write_text(str(obj))

    def stop(self, timeout: float = 30) -> Optional[int]:
        """SIGTERM, wait, then SIGKILL: nothing is left running."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._reader.join(5)
        return self.popen.returncode

    # -- HTTP -----------------------------------------------------------------------------------
    def request(self, path: str, body: Any = None, token: Optional[str] = "", method: Optional[str] = None,
                headers: Optional[Dict[str, str]] = None, raw: Optional[bytes] = None) -> Tuple[int, Any]:
        """(status, parsed JSON or bytes); token "" means the right one, None none."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = dict(headers or {})
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        if token is not None:
            h["Authorization"] = f"Bearer {token or self.token}"
        req = urllib.request.Request(self.base + path, data=data, headers=h,
                                     method=method or ("POST" if data is not None else "GET"))
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, content, kind = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, content, kind = e.code, e.read(), e.headers.get("Content-Type", "")
        return status, (json.loads(content) if kind.startswith("application/json") else content)

    def post(self, kind: str, body: Any = None) -> Any:
        status, answer = self.request(f"/api/{kind}", body if body is not None else {})
        assert status == 200, (kind, body, status, answer)
        return answer

    def state(self) -> Dict[str, Any]:
        status, state = self.request("/api/state")
        assert status == 200, state
        return state

    def wait_for(self, what, limit_s: float = 60, every: float = 0.2) -> Dict[str, Any]:
        """Poll /api/state until what(state) is true; the state it was true in."""
        deadline = time.monotonic() + limit_s
        state: Dict[str, Any] = {}
        while time.monotonic() < deadline:
            state = self.state()
            if what(state):
                return state
            time.sleep(every)
        raise AssertionError(f"not reached in {limit_s} s; last state: {state}\n" + self.output()[-3000:])


def known(state: Dict[str, Any]) -> Dict[str, int]:
    """name -> frames of the trained classes."""
    return {c["name"]: c["frames"] for c in state["classes"] if c["trained"]}
