"""One party's weights, loaded one tensor ahead of use within a byte budget.

A model too large for memory is evaluated with its weights streamed: each weight is
loaded (read from the party's store, its seeded components expanded) just before the
model code needs it and dropped once the next one is asked for.  A forward pass asks for
the weights in the same order every time (embedding, each layer's projections in turn,
the head; then the next token's embedding again), so a background thread can load weight
k + 1 while weight k is in use.

Resident memory per party: the weight in use, whatever the loader holds ahead and the
buffers it keeps for reuse, at most ``budget_bytes`` together (a weight larger than the
budget is loaded alone, once the one in use is released).  A weight asked for out of order
is loaded on the spot and the loader restarts after it: correct in any order, fast in the
usual one.

Buffers are reused: a released weight's tensor, if nothing else refers to it or to its
memory (no view of it survives), is handed to ``load`` again for the next weight of the
same shape (a model's layers repeat their shapes).  Writing into memory already mapped
is about twice as fast here as into fresh pages, which the kernel must fault in and zero.

The counters say where the time went: ``load_s`` (the loader's own time, spent beside
the computation), ``stall_s`` (time the model code waited for a weight: what streaming
added to the wall time) and ``loads``.
"""

from __future__ import annotations

import sys
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
        load: Callable[[int, torch.Tensor | None], torch.Tensor],
        sizes: list[int],
        budget_bytes: int,
        name: str = "prefetch",
    ):
        """``load(k, buffer)`` returns weight k, written into ``buffer`` when it is not None
        (a released tensor of weight k's size, to reuse); ``sizes[k]`` is weight k's size
        in bytes; ``budget_bytes`` bounds what is held at once."""
        self._load = load
        self._sizes = sizes
        self._budget = budget_bytes
        self.stats = PrefetchStats()
        self._cond = threading.Condition()
        self._ready: dict[int, torch.Tensor] = {}
        self._current: tuple[int, torch.Tensor] | None = None
        self._pool: list[torch.Tensor] = []
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
            if self._current is not None:
                released = self._current[1]
                self._current = None
                if _unshared(released):
                    self._pool.append(released)
                del released
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
            self._pool.clear()
            self._cond.notify_all()
        self._thread.join()

    # -- loader side -----------------------------------------------------------------
    def _held_bytes(self) -> int:
        held = sum(self._sizes[k] for k in self._ready)
        held += sum(_nbytes(buffer) for buffer in self._pool)
        return held + (self._sizes[self._current[0]] if self._current is not None else 0)

    def _take_buffer(self, index: int) -> torch.Tensor | None:
        """A pooled tensor of weight ``index``'s size, taken out of the pool, or None."""
        for slot, buffer in enumerate(self._pool):
            if _nbytes(buffer) == self._sizes[index]:
                return self._pool.pop(slot)
        return None

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
                return index if self._fits(index) else None
        return None

    def _fits(self, index: int) -> bool:
        """Whether weight ``index`` may load now (into a pooled buffer of its size if there
        is one); other pooled buffers are freed first when it would not fit beside them."""
        size = self._sizes[index]

        def others() -> int:  # what stays held beside the new weight
            reused = any(_nbytes(b) == size for b in self._pool)
            return self._held_bytes() - (size if reused else 0)

        if others() + size > self._budget:
            same = [b for b in self._pool if _nbytes(b) == size]
            self._pool = same[:1]
        return others() == 0 or others() + size <= self._budget

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
                buffer = self._take_buffer(index)
            start = time.perf_counter()
            try:
                tensor = self._load(index, buffer)
                del buffer
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
                del tensor  # the ready list's reference only, so a release can recycle it
                self._cond.notify_all()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _unshared(tensor: torch.Tensor) -> bool:
    """True when the caller's one reference is all that holds ``tensor`` and its memory:
    no other name refers to it (refcount: the caller's, this argument, getrefcount's) and
    no view of it exists (storage uses: the tensor's and the temporary storage object's)."""
    storage_uses = torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)
    return sys.getrefcount(tensor) <= 3 and storage_uses <= 2
