"""The web server of `stream --serve`: aiohttp on its own thread and event loop.

Routes (all need the token, see `auth`):

    GET  /                 the page (opened as /?token=TOKEN it sets the cookie and redirects to /)
    GET  /video.mjpg       the live view with the overlay (MJPEG), at most --serve-fps
    GET  /api/state        JSON: prediction, top-k, classes, teacher, figures, chart
    GET  /api/events       server-sent events: "state" a few times a second and every session event
    POST /api/teach        {"name": "mug"} (new or known class; optional "frames")
    POST /api/more         {"name": "mug"} (a known class only)
    POST /api/rename       {"name": "mug", "new_name": "cup"}
    POST /api/forget       {"name": "mug"}
    POST /api/pause | /api/resume | /api/save | /api/quit    (no body)
    GET  /api/model.onnx   the learned model (export-model's ONNX, built from the saved state)
    GET  /api/log.jsonl    the session's event log

Every command goes through the loop's `Controller` (the same API as stdin and the window keys). A
client is never waited for: frames and events are written with a timeout (`WRITE_TIMEOUT_S`) and a
client that does not take them is disconnected; a client that goes away leaves nothing behind.
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set

from aiohttp import web

from ..control import Command, CommandError
from . import auth
from .hub import Hub

WRITE_TIMEOUT_S = 5.0  # a stream client that takes nothing for this long is disconnected
SEND_BUFFER = 65536  # the kernel's send buffer of a stream: a few frames at most, not megabytes
COMMAND_TIMEOUT_S = 30.0
EVENT_QUEUE = 256
PAGE = Path(__file__).resolve().parents[3] / "data" / "stream_web.html"
POSTS = {"teach": ("name",), "more": ("name",), "rename": ("name", "new_name"), "forget": ("name",),
         "pause": (), "resume": (), "save": (), "quit": ()}


class _Client:
    """One /api/events reader: its queue, dropped when full (a reader that does not keep up)."""

    def __init__(self) -> None:
        self.queue: "asyncio.Queue[Optional[Dict[str, Any]]]" = asyncio.Queue(EVENT_QUEUE)

    def put(self, event: Optional[Dict[str, Any]]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.end()

    def end(self) -> None:
        """None is the end: the client is disconnected."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class WebServer:
    """Serves `hub` and sends commands to `control`; `start` runs it on a thread, `stop` ends it."""

    def __init__(self, hub: Hub, control: Any, events: Any, sock: Any, token: str,
                 model_bytes: Callable[[], bytes]) -> None:
        self.hub, self.control, self.events, self.sock, self.token = hub, control, events, sock, token
        self.model_bytes = model_bytes
        self.refusals = auth.RefusalLog()
        self.port = int(sock.getsockname()[1])
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._clients: Set[_Client] = set()
        self._frame_event: Optional[asyncio.Event] = None
        self._stop: Optional[asyncio.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self.error: Optional[BaseException] = None
        self.open_streams = 0  # video and event responses in progress (the tests check none is left)
        self.frames_sent = 0

    # -- life -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="web", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # told to the starting thread, or on stderr once running
            self.error = e
            if self._ready.is_set():
                print(f"web: server stopped: {e}", file=sys.stderr)
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._stop, self._frame_event = asyncio.Event(), asyncio.Event()
        app = web.Application(client_max_size=auth.BODY_LIMIT, middlewares=[self._guard])
        app.add_routes([web.get("/", self._page), web.get("/video.mjpg", self._video),
                        web.get("/api/state", self._state), web.get("/api/events", self._event_stream),
                        web.get("/api/model.onnx", self._model), web.get("/api/log.jsonl", self._log)]
                       + [web.post(f"/api/{kind}", self._command) for kind in POSTS])
        loop = asyncio.get_running_loop()
        self.hub.on_frame = lambda: loop.call_soon_threadsafe(self._new_frame)
        self.hub.on_state = lambda state: loop.call_soon_threadsafe(self._broadcast, dict(state, type="state"))
        self.events.add_listener(lambda event: loop.call_soon_threadsafe(self._broadcast, event))
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock, shutdown_timeout=1.0).start()
        self._ready.set()
        await self._stop.wait()
        self.hub.on_frame = self.hub.on_state = None
        for client in list(self._clients):
            client.end()
        self._new_frame()
        await self._runner.cleanup()

    # -- plumbing -------------------------------------------------------------------------------
    def _new_frame(self) -> None:
        event, self._frame_event = self._frame_event, asyncio.Event()
        if event is not None:
            event.set()

    def _broadcast(self, event: Dict[str, Any]) -> None:
        for client in list(self._clients):
            client.put(event)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        """The token on every request, and the origin, size and type of state-changing ones."""
        peer = request.remote or "?"
        header = request.headers.get("Authorization", "")
        bearer = header[7:].strip() if header.startswith("Bearer ") else None
        cookie = request.cookies.get(auth.COOKIE)
        query = request.query.get("token") if request.path == "/" and request.method == "GET" else None
        if bearer is not None:
            ok = auth.same_token(bearer, self.token)
        elif query is not None:
            ok = auth.same_token(query, self.token)
        else:
            ok = auth.same_token(cookie, self.token)
        if not ok:
            why = "a wrong token" if (bearer or query or cookie) else "no token"
            self.refusals.refused(peer, request.path, why)
            if request.path == "/":
                return web.Response(status=401, content_type="text/html", text=UNAUTHORIZED_PAGE)
            return _error(401, "a valid token is needed: Authorization: Bearer TOKEN, or open the link printed "
                               "at start")
        if query is not None:  # the printed link: keep the token in a cookie, and take it out of the address
            response = web.HTTPSeeOther("/")
            response.set_cookie(auth.COOKIE, query, httponly=True, samesite="Strict", path="/",
                                max_age=30 * 24 * 3600)
            return response
        if request.method == "POST":
            why = auth.cross_origin(request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"),
                                    request.scheme, request.host, bearer is None)
            if why:
                self.refusals.refused(peer, request.path, why)
                return _error(403, f"refused: {why}")
            if (request.content_length or 0) > auth.BODY_LIMIT:
                return _error(413, f"the body is over {auth.BODY_LIMIT} bytes")
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the body is over {auth.BODY_LIMIT} bytes")

    # -- pages ----------------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=PAGE.read_bytes(), content_type="text/html", charset="utf-8",
                            headers=dict(NO_STORE, **SECURITY_HEADERS))

    async def _video(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=dict(NO_STORE, **{
            "Content-Type": "multipart/x-mixed-replace; boundary=frame"}))
        _small_send_buffer(request)
        await response.prepare(request)
        self.hub.watch(+1)
        self.open_streams += 1
        try:
            version, stalled_since = -1, None
            while not self._stop.is_set():
                frame, now = self.hub.latest_frame()
                if frame is None or now == version:
                    await self._frame_event.wait()
                    continue
                version = now
                transport = request.transport
                if transport is None:
                    break
                if transport.get_write_buffer_size() > 0:  # the last frame is not taken yet: skip this one
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > WRITE_TIMEOUT_S:
                        raise asyncio.TimeoutError
                    continue
                stalled_since = None
                part = (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(frame)
                        + frame + b"\r\n")
                await asyncio.wait_for(response.write(part), WRITE_TIMEOUT_S)
                self.frames_sent += 1
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            _abort(request)  # a reader that does not keep up, or one that went away
        finally:
            self.hub.watch(-1)
            self.open_streams -= 1
        return response

    async def _state(self, request: web.Request) -> web.StreamResponse:
        for _ in range(50):  # the loop's first snapshot comes within a frame or two
            state = self.hub.latest_state()
            if state is not None:
                state["clients"] = {"video": self.hub.video_clients, "events": len(self._clients),
                                    "streams": self.open_streams}
                return web.json_response(state, headers=NO_STORE)
            await asyncio.sleep(0.1)
        return _error(503, "no state yet: the live loop has not started")

    async def _event_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=dict(NO_STORE, **{"Content-Type": "text/event-stream"}))
        _small_send_buffer(request)
        await response.prepare(request)
        client = _Client()
        state = self.hub.latest_state()
        if state is not None:
            client.put(dict(state, type="state"))
        self._clients.add(client)
        self.open_streams += 1
        try:
            while not self._stop.is_set():
                event = await client.queue.get()
                if event is None:
                    break
                data = json.dumps(event, separators=(",", ":"))
                await asyncio.wait_for(response.write(f"event: {event['type']}\ndata: {data}\n\n".encode()),
                                       WRITE_TIMEOUT_S)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            _abort(request)
        finally:
            self._clients.discard(client)
            self.open_streams -= 1
        return response

    async def _command(self, request: web.Request) -> web.StreamResponse:
        kind = request.path.rsplit("/", 1)[1]
        fields = POSTS[kind]
        body: Dict[str, Any] = {}
        if fields or request.can_read_body:
            raw = await request.read()
            if raw.strip():
                if request.content_type != "application/json":
                    return _error(415, "send the body as application/json")
                try:
                    body = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    return _error(400, "the body is not valid JSON")
                if not isinstance(body, dict):
                    return _error(400, "the body must be a JSON object")
        missing = [f for f in fields if f not in body]
        if missing:
            return _error(400, f"missing {', '.join(missing)} in the body")
        frames = body.get("frames")
        if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool)):
            return _error(400, "frames must be an integer")
        command = Command(kind, body.get("name", "") if fields else "", body.get("new_name", ""), frames, "web")
        if not all(isinstance(v, str) for v in (command.name, command.new_name)):
            return _error(400, "names must be strings")
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(self.control.submit(command)), COMMAND_TIMEOUT_S)
        except CommandError as e:
            return _error(400, str(e))
        except asyncio.TimeoutError:
            return _error(504, "the live loop did not take the command in time")
        return web.json_response(dict(ok=True, **result))

    async def _model(self, request: web.Request) -> web.StreamResponse:
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, self.model_bytes)
        except Exception as e:  # nothing learned yet, or a state being replaced: said, not a crash
            return _error(409, f"no learned model to download: {e}")
        return web.Response(body=data, content_type="application/octet-stream",
                            headers={"Content-Disposition": 'attachment; filename="learned.onnx"'})

    async def _log(self, request: web.Request) -> web.StreamResponse:
        text = "".join(json.dumps(e) + "\n" for e in self.events.lines())
        return web.Response(text=text, content_type="application/x-ndjson",
                            headers={"Content-Disposition": 'attachment; filename="events.jsonl"'})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)


def _small_send_buffer(request: web.Request) -> None:
    """A stream's socket keeps at most SEND_BUFFER bytes for a client that does not read (the
    kernel would otherwise grow it to megabytes: seconds of old frames, and no stall to see)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass
    if transport is not None:
        transport.set_write_buffer_limits(high=SEND_BUFFER)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


NO_STORE = {"Cache-Control": "no-store"}
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' "
                                               "'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
                                               "frame-ancestors 'none'"}
UNAUTHORIZED_PAGE = ("<!doctype html><meta charset=utf-8><meta name=viewport content='width=device-width'>"
                     "<title>latent-replay: token needed</title><p>This page needs the access token: open the "
                     "link <code>http://HOST:PORT/?token=...</code> that <code>latent-replay serve</code> printed "
                     "at start (or the token file's token).")
