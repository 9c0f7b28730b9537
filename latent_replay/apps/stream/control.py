"""The stream demo's one command API: what stdin lines, window keys and the web page all go through.

A `Command` is made by whoever received it (`parse_line` for a stdin line, `key_command` for a
window key, the web server for a request) and handed to `Controller.submit` from any thread; the
live loop runs it between two frames (`Controller.apply_pending`), so the class book, the collection
and the teacher are only ever touched by the loop thread, and everything that changes the learner
(train, forget, save) is queued to the teacher's worker in order. `submit` returns a Future with the
command's result (a dict) or its `CommandError`: the web server answers with it.
"""
from __future__ import annotations

import threading
import time
import unicodedata
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from .common import StreamError

NAME_MAX = 40
KINDS = ("teach", "more", "rename", "forget", "pause", "resume", "save", "quit")


class CommandError(StreamError):
    """A command that cannot be carried out as given (unknown class, bad name, ...): said to the sender."""


@dataclass
class Command:
    """One request: `kind` in KINDS; `name` (teach, more, rename, forget) and `new_name` (rename)."""

    kind: str
    name: str = ""
    new_name: str = ""
    frames: Optional[int] = None  # teach/more: frames to collect (default --teach-frames)
    origin: str = "api"  # stdin, key, web, schedule: said in the event log


def check_name(name: Any) -> str:
    """A class name as given by a user: a string of 1..NAME_MAX printable characters (no control or
    line characters, no leading/trailing spaces after stripping). Anything is escaped where shown."""
    if not isinstance(name, str):
        raise CommandError("the name must be a string")
    name = unicodedata.normalize("NFC", name.strip())
    if not name:
        raise CommandError("the name is empty")
    if len(name) > NAME_MAX:
        raise CommandError(f"the name is {len(name)} characters long; at most {NAME_MAX}")
    if not name.isprintable():
        raise CommandError("the name has control or line characters")
    return name


def parse_line(line: str) -> Optional[Command]:
    """A stdin line: 'teach NAME', 'more NAME', 'rename OLD -> NEW', 'forget NAME', 'pause', 'resume',
    'save', 'quit'. Raises CommandError for anything else; None for an empty line."""
    word, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if not word:
        return None
    if word in ("teach", "more", "forget") and rest:
        return Command(word, rest, origin="stdin")
    if word == "rename" and " -> " in rest:
        old, _, new = rest.partition(" -> ")
        return Command("rename", old.strip(), new.strip(), origin="stdin")
    if word in ("pause", "resume", "save", "quit") and not rest:
        return Command(word, origin="stdin")
    raise CommandError(f"unknown command {line.strip()!r}: use teach NAME, more NAME, rename OLD -> NEW, "
                       f"forget NAME, pause, resume, save or quit")


class EventFeed:
    """The session's events (teachings, trainings, forgets, renames, ...) for the web page: the last
    `keep` in memory (the event log download) and pushed to listeners (the server's clients). A
    listener is called on the loop thread and must not block."""

    def __init__(self, keep: int = 5000) -> None:
        self.history: Deque[Dict[str, Any]] = deque(maxlen=keep)
        self._listeners: List[Callable[[Dict[str, Any]], None]] = []
        self._lock = threading.Lock()
        self._t0 = time.time()

    def add_listener(self, listener: Callable[[Dict[str, Any]], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def emit(self, kind: str, **values: Any) -> Dict[str, Any]:
        event = dict(type=kind, time=round(time.time(), 3), **values)
        with self._lock:
            self.history.append(event)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)
        return event

    def lines(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self.history)


class Controller:
    """Runs `Command`s on the live loop's thread (see the module docstring). `app` is the StreamApp."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._pending: Deque[Tuple[Command, Future]] = deque()

    def submit(self, command: Command) -> "Future[Dict[str, Any]]":
        """From any thread: queue `command` for the loop; the Future gets its result or CommandError."""
        future: "Future[Dict[str, Any]]" = Future()
        self._pending.append((command, future))
        return future

    def apply_pending(self) -> None:
        """On the loop thread, between frames: run what was submitted, in order."""
        while self._pending:
            command, future = self._pending.popleft()
            try:
                future.set_result(self.execute(command))
            except CommandError as e:
                future.set_exception(e)

    def fail_pending(self, why: str) -> None:
        """At the end of the session: what was never run is answered, so no sender waits for ever."""
        while self._pending:
            _, future = self._pending.popleft()
            future.set_exception(CommandError(why))

    def execute(self, command: Command) -> Dict[str, Any]:
        """Run one command now (loop thread); raises CommandError."""
        handler = getattr(self, "_" + command.kind, None) if command.kind in KINDS else None
        if handler is None:
            raise CommandError(f"unknown command {command.kind!r}")
        result = handler(command)
        self.app.events.emit("command", command=command.kind, name=command.name or None,
                             new_name=command.new_name or None, origin=command.origin)
        return result

    # -- the commands ---------------------------------------------------------------------------
    def _teach(self, c: Command) -> Dict[str, Any]:
        app = self.app
        name = check_name(c.name)
        frames = int(c.frames or app.opts.teach_frames)
        if not 1 <= frames <= 100000:
            raise CommandError("frames must be 1..100000")
        if app.collecting is not None:
            raise CommandError(f"still collecting '{app.collecting.name}'")
        try:
            label = app.book.index(name)
        except StreamError as e:
            raise CommandError(str(e)) from None
        app.start_collecting(name, label, frames)
        return {"collecting": name, "frames": frames}

    def _more(self, c: Command) -> Dict[str, Any]:
        if check_name(c.name) not in self.app.book.names:
            raise CommandError(f"no class {c.name.strip()!r}: teach it first")
        return self._teach(c)

    def _label_of(self, name: str) -> int:
        name = check_name(name)
        if name not in self.app.book.names:
            raise CommandError(f"no class {name!r}")
        return self.app.book.names.index(name)

    def _rename(self, c: Command) -> Dict[str, Any]:
        app = self.app
        label, new = self._label_of(c.name), check_name(c.new_name)
        if new in app.book.names:
            raise CommandError(f"there is a class {new!r} already")
        old = app.book.names[label]
        app.book.names[label] = new
        if app.collecting is not None and app.collecting.label == label:
            app.collecting.name = new
        app.queue_save()
        app.events.emit("rename", label=old, new_name=new, **{"class": label})
        return {"renamed": old, "to": new}

    def _forget(self, c: Command) -> Dict[str, Any]:
        app = self.app
        label = self._label_of(c.name)
        app.forget(label)
        return {"forgetting": app.book.names[label]}

    def _pause(self, c: Command) -> Dict[str, Any]:
        self.app.set_paused(True)
        return {"paused": True}

    def _resume(self, c: Command) -> Dict[str, Any]:
        self.app.set_paused(False)
        return {"paused": False}

    def _save(self, c: Command) -> Dict[str, Any]:
        self.app.queue_save()
        return {"saving": True}

    def _quit(self, c: Command) -> Dict[str, Any]:
        self.app.quit = True
        return {"quitting": True}


def key_command(key: int, book_names: List[str]) -> Optional[Command]:
    """The window's single keys (besides t + typing, handled by the app): q/Esc quit, 1..9 more frames
    of class 1..9, p pause/resume is decided by the app, s save."""
    if key in (ord("q"), 27):
        return Command("quit", origin="key")
    if key == ord("s"):
        return Command("save", origin="key")
    if ord("1") <= key <= ord("9"):
        k = key - ord("1")
        if k < len(book_names) and book_names[k]:
            return Command("more", book_names[k], origin="key")
        raise CommandError(f"no class {k + 1} yet: press t to teach a new one")
    return None
