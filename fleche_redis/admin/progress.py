"""Progress bars for long maintenance work, drawn on stderr when a person is watching.

:class:`ProgressBar` is a ``progress(stage, done, total)`` callback: one
line per stage redrawn in place on a terminal, nothing elsewhere (pipes,
CI, ``--json``)::

    with ProgressBar() as bar:
        cache.calls.verify(progress=bar)
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """A ``progress(stage, done, total)`` callback drawing a bar on *stream* if it is a terminal."""

    WIDTH = 30
    REDRAW = 0.1
    """Seconds between two redraws of the same stage (the last update always shows)."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._stage: str | None = None
        self._drawn = 0.0
        self._started = time.monotonic()

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if stage != self._stage:
            if self._stage is not None:
                self.stream.write("\n")
            self._stage, self._started, self._drawn = stage, now, 0.0
        elif now - self._drawn < self.REDRAW and (total is None or done < total):
            return
        self._drawn = now
        self.stream.write("\r" + self.line(stage, done, total, now - self._started))
        self.stream.flush()

    def line(self, stage: str, done: int, total: int | None, seconds: float) -> str:
        """The text of one bar (also what tests look at)."""
        if total:
            share = min(1.0, done / total)
            filled = round(share * self.WIDTH)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            return f"{stage:<10} [{bar}] {share:4.0%} {done:,}/{total:,} {seconds:5.1f} s"
        return f"{stage:<10} {done:,} {seconds:5.1f} s"

    def close(self) -> None:
        """End the last bar's line so what follows starts on a fresh one."""
        if self.enabled and self._stage is not None:
            self.stream.write("\n")
            self.stream.flush()
        self._stage = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
