"""Progress of a running speed test, for a person watching a terminal."""

from __future__ import annotations

import sys
import threading
from typing import Protocol, TextIO


class Progress(Protocol):
    def phase(self, name: str) -> None: ...
    def step(self, done: float, total: float, note: str = "") -> None: ...
    def figure(self, label: str, value: str) -> None: ...


class SilentProgress:
    def phase(self, name: str) -> None:
        pass

    def step(self, done: float, total: float, note: str = "") -> None:
        pass

    def figure(self, label: str, value: str) -> None:
        pass


class TerminalProgress:
    """Draws ``Download   [#######.......] 48.2 Mbps`` on one line of ``stream``."""

    WIDTH = 30

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._phase = ""

    def phase(self, name: str) -> None:
        with self._lock:
            self._phase = name
            self._stream.write(f"{name}...")
            self._stream.flush()

    def step(self, done: float, total: float, note: str = "") -> None:
        filled = min(self.WIDTH, int(self.WIDTH * done / max(total, 1e-9)))
        bar = "#" * filled + "." * (self.WIDTH - filled)
        shown = note or f"{done:g}/{total:g}"
        with self._lock:
            self._stream.write(f"\r\033[K{self._phase:<10} [{bar}] {shown}")
            self._stream.flush()

    def figure(self, label: str, value: str) -> None:
        with self._lock:
            self._stream.write(f"\r\033[K{label:<10} {value}\n")
            self._stream.flush()
