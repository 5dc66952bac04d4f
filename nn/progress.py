"""Progress over the layer steps of a long run, drawn by tqdm (rate and time left).

tqdm picks the right display for where the run is: a redrawn bar on a terminal, a widget in
a notebook (``tqdm.auto``), and, when stderr is not a terminal (a log file, CI), a line at
most every :data:`LOG_INTERVAL_S` seconds instead of a redraw every fraction of a second.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

TERMINAL_INTERVAL_S = 0.2
LOG_INTERVAL_S = 10.0


class Progress:
    """A tqdm bar over ``total`` steps, advanced by the models once per layer evaluated.

    The bar closes itself when the count reaches ``total``, so a finished run leaves one
    final line (steps, elapsed time, rate) and no open handle.
    """

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None):
        stream = sys.stderr if stream is None else stream
        interactive = getattr(stream, "isatty", lambda: False)()
        self.total = total
        self._bar = tqdm(
            total=total,
            desc=desc,
            file=stream,
            unit="step",
            mininterval=TERMINAL_INTERVAL_S if interactive else LOG_INTERVAL_S,
            dynamic_ncols=interactive,
            ascii=not interactive,
        )

    @property
    def done(self) -> int:
        return self._bar.n

    def advance(self, n: int = 1) -> None:
        if self._bar.disable:
            return
        self._bar.update(min(n, self.total - self._bar.n))
        if self._bar.n >= self.total:
            self._bar.close()


def tracked(items: Iterable[T], progress: Progress | None) -> Iterator[T]:
    """Yield ``items``, advancing ``progress`` (if any) after each one is processed."""
    for item in items:
        yield item
        if progress is not None:
            progress.advance()
