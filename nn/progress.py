"""A minimal progress bar on stderr (no dependency), advanced once per layer evaluated."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

_WIDTH = 30
_REDRAW_S = 0.2


class Progress:
    """``desc [#####.....] done/total  elapsed`` redrawn in place; newline when complete.

    Redraws at most every 0.2 s (fast plaintext runs would otherwise flood the terminal).
    """

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None):
        self.total = total
        self.desc = desc
        self.done = 0
        self.stream = sys.stderr if stream is None else stream
        self.start = time.perf_counter()
        self.drawn_at = float("-inf")

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        now = time.perf_counter()
        if self.done < self.total and now - self.drawn_at < _REDRAW_S:
            return
        self.drawn_at = now
        filled = _WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (_WIDTH - filled)
        elapsed = now - self.start
        end = "\n" if self.done == self.total else ""
        self.stream.write(f"\r{self.desc} [{bar}] {self.done}/{self.total} {elapsed:6.1f}s{end}")
        self.stream.flush()


def tracked(items: Iterable[T], progress: Progress | None) -> Iterator[T]:
    """Yield ``items``, advancing ``progress`` (if any) after each one is processed."""
    for item in items:
        yield item
        if progress is not None:
            progress.advance()
