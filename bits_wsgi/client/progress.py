"""Progress output of `bits-wsgi upload`: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from .upload import Progress

MiB = 1024 * 1024


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def describe(progress: Progress) -> str:
    fraction = progress.sent / progress.total if progress.total else 1.0
    remaining = progress.total - progress.sent
    eta = _duration(remaining / progress.rate) if progress.rate > 0 else "-:--:--"
    return (
        f"{fraction:6.1%}  {progress.sent / MiB:,.1f}/{progress.total / MiB:,.1f} MiB  "
        f"{progress.rate / MiB:,.1f} MiB/s  ETA {eta}"
    )


#: Back to the start of the line, and clear it to its end (VT100, every terminal since).
_REDRAW = "\r\x1b[K"


class ProgressPrinter:
    """Callable progress sink: redraws one line on a TTY, prints every 10 % (or 10 s) otherwise;
    :meth:`notice` puts a line of its own above the bar."""

    def __init__(self, stream: TextIO, *, width: int = 30) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.width = width
        self._last_step = -1
        self._last_time = 0.0
        self._drawn = ""

    def notice(self, line: str) -> None:
        if self.tty:
            self.stream.write(f"{_REDRAW}{line}\n{self._drawn}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def interrupted(self) -> None:
        """Leave the bar where it is and start a new line (Ctrl-C)."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = ""

    def __call__(self, progress: Progress) -> None:
        if self.tty:
            filled = self.width * progress.sent // max(progress.total, 1)
            bar = "#" * filled + "-" * (self.width - filled)
            self._drawn = f"[{bar}] {describe(progress)}"
            self.stream.write(_REDRAW + self._drawn)
            if progress.sent >= progress.total:
                self.stream.write("\n")
                self._drawn = ""
            self.stream.flush()
            return
        step = 10 * progress.sent // max(progress.total, 1)
        now = time.monotonic()
        if step != self._last_step or now - self._last_time >= 10:
            self._last_step, self._last_time = step, now
            self.stream.write(describe(progress) + "\n")
            self.stream.flush()
