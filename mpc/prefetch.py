"""One party's weights, loaded one tensor ahead of use within a byte budget.

A model too large for memory is evaluated with its weights streamed: each weight is
loaded (read from the party's store, its seeded components expanded) just before the
model code needs it and dropped once the next one is asked for.  A forward pass asks for
the weights in the same order every time (embedding, each layer's projections in turn,
the head; then the next token's embedding again), so a background thread can load weight
k + 1 while weight k is in use.

Resident memory per party: the weight in use plus whatever the loader holds ahead, at
most ``budget_bytes`` together (a weight larger than the budget is loaded alone, once the
one in use is released).  A weight asked for out of order is loaded on the spot and the
loader restarts after it: correct in any order, fast in the usual one.

The counters say where the time went: ``load_s`` (the loader's own time, spent beside
the computation), ``stall_s`` (time the model code waited for a weight: what streaming
added to the wall time) and ``loads``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class PrefetchStats:
    loads: int = 0
    load_s: float = 0.0
    stall_s: float = 0.0


class Prefetcher:
    """Loads weights 0..count-1 (cyclically) by ``load(index)`` ahead of :meth:`get`."""

    def __init__(
        self,
        load: Callable[[int], torch.Tensor],
        sizes: list[int],
        budget_bytes: int,
        name: str = "prefetch",
    ):
        """``sizes[k]`` is weight k's size in bytes as loaded; ``budget_bytes`` bounds
        the weight in use plus those loaded ahead."""
        self._load = load
        self._sizes = sizes
        self._budget = budget_bytes
        self.stats = PrefetchStats()
        self._cond = threading.Condition()
        self._ready: dict[int, torch.Tensor] = {}
        self._current: tuple[int, torch.Tensor] | None = None
        self._next = 0
        self._loading: int | None = None
        self._epoch = 0  # bumped when a get() out of order makes pending work stale
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- consumer side ---------------------------------------------------------------
    def get(self, index: int) -> torch.Tensor:
        """Weight ``index``; the previous one is released (the loader may reuse its room)."""
        with self._cond:
            if self._current is not None and self._current[0] == index:
                return self._current[1]
            self._current = None
            if index not in self._ready and self._loading != index:
                # Out of order: drop what was loaded ahead and load this one next.
                self._ready.clear()
                self._next = index
                self._epoch += 1
            self._cond.notify_all()
            start = time.perf_counter()
            while index not in self._ready:
                if self._error is not None:
                    raise RuntimeError(f"loading weight {index} failed") from self._error
                self._cond.wait()
            self.stats.stall_s += time.perf_counter() - start
            tensor = self._ready.pop(index)
            self._current = (index, tensor)
            self._cond.notify_all()
            return tensor

    def close(self) -> None:
        """Stop the loader and drop every weight it holds."""
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._current = None
            self._cond.notify_all()
        self._thread.join()

    # -- loader side -----------------------------------------------------------------
    def _held_bytes(self) -> int:
        held = sum(self._sizes[k] for k in self._ready)
        return held + (self._sizes[self._current[0]] if self._current is not None else 0)

    def _pick(self) -> int | None:
        """The next weight to load: the first in order from ``_next`` not already held, if
        it fits the budget beside what is held (anything fits when nothing is held)."""
        count = len(self._sizes)
        held = set(self._ready)
        if self._current is not None:
            held.add(self._current[0])
        for step in range(count):
            index = (self._next + step) % count
            if index not in held:
                used = self._held_bytes()
                return index if used == 0 or used + self._sizes[index] <= self._budget else None
        return None

    def _run(self) -> None:
        count = len(self._sizes)
        while True:
            with self._cond:
                while not self._closed and (index := self._pick()) is None:
                    self._cond.wait()
                if self._closed:
                    return
                epoch = self._epoch
                self._loading = index
            start = time.perf_counter()
            try:
                tensor = self._load(index)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer in get()
                with self._cond:
                    self._error = exc
                    self._loading = None
                    self._cond.notify_all()
                return
            with self._cond:
                self.stats.load_s += time.perf_counter() - start
                self.stats.loads += 1
                self._loading = None
                if epoch == self._epoch and not self._closed:
                    self._ready[index] = tensor
                    self._next = (index + 1) % count
                self._cond.notify_all()
