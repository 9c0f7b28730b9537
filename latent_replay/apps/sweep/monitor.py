"""What a sweep prints while it runs: one line per cell event, and a summary bar.

Events: queued (at start), running batch k/n (read from the cell folder's progress file, at most
every `every` seconds per cell), done, failed with its error. A watcher thread reads the progress
files, so the lines come from the same place whether the cells run here or on Ray workers.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Dict, List, Optional, Set, Tuple

from .cells import progress
from .grid import Cell


class Monitor:
    """Prints the sweep's cell events; counts done and failed cells."""

    def __init__(self, cells: List[Cell], bar: bool = True, every: float = 10.0) -> None:
        self.cells = cells
        self.every = every
        self.failed: Dict[str, str] = {}
        self.done: Set[str] = set()
        self._running: Dict[str, Cell] = {}
        self._last: Dict[str, Tuple[Optional[Tuple[int, int]], float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=len(cells), desc="sweep", unit="cell", file=sys.stderr, dynamic_ncols=True)

    def line(self, cell: Cell, text: str) -> None:
        message = f"{cell.name}: {text}"
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def report(self, cell: Cell, state: str, detail: Optional[str] = None) -> None:
        """A cell event: "queued", "running", "done", "failed" (with its error), "finished before"."""
        with self._lock:
            if state == "running":
                self._running[cell.name] = cell
                self._last[cell.name] = (progress(cell.out), 0.0)
                self.line(cell, "running")
                return
            self._running.pop(cell.name, None)
            if state in ("done", "finished before"):
                self.done.add(cell.name)
            elif state == "failed":
                self.failed[cell.name] = detail or "failed"
            self.line(cell, f"{state}" + (f": {detail}" if detail else ""))
            if self._bar is not None and state != "queued":
                self._bar.update(1)
                self._bar.set_postfix(done=len(self.done), failed=len(self.failed))

    def watch(self, cells: List[Cell]) -> None:
        """Treat `cells` as running (Ray decides when): their progress lines appear as their folders change."""
        with self._lock:
            for c in cells:
                self._running[c.name] = c
                self._last[c.name] = (progress(c.out), 0.0)  # a line when the folder changes, not before
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def start(self) -> None:
        self.watch([])

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.poll()

    def poll(self) -> None:
        """One look at every running cell's progress file."""
        now = time.monotonic()
        with self._lock:
            for name, cell in list(self._running.items()):
                seen = progress(cell.out)
                last, at = self._last.get(name, (None, 0.0))
                if seen is not None and seen != last and (now - at >= self.every or seen[0] == seen[1]):
                    self._last[name] = (seen, now)
                    self.line(cell, f"running batch {seen[0]}/{seen[1]}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.close()
