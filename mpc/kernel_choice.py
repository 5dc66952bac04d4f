"""Measured choice among bit-exact kernels, once per (device, shape class).

The ring GEMM has several exact forms on a GPU (float64 limbs, int8 tensor-core limbs);
which is fastest depends on the device and on the shapes, so instead of a table the
first product of each shape class times every candidate on its real operands (one
warm-up and two timed runs each, synchronised; the faster run counts) and keeps the
fastest.  A candidate that raises (e.g. a kernel the device lacks) is dropped for that
class.  Every candidate gives the same ring elements, so parties that choose differently
still agree bit for bit.

Shape class: the batch, row, inner and column sizes rounded up to powers of two, so a
model's few dozen distinct products are measured a few dozen times per process.

A product larger than :data:`MEASURE_MACS` multiply-adds is timed on a corner of its
operands of about that size (fewer rows and columns, then fewer inner terms): a slow candidate (torch's
int64 GEMM on a CPU without AVX-512 runs at ~150 M multiply-adds per second) would
otherwise cost seconds per class, e.g. a one-hot lookup in a 50,257-row table.  The kept
kernel then computes the whole product.

A corner must still look like the product to the kernels.  Blocked GEMMs (the float64
limbs) pay a fixed cost per call and reach their speed only on blocks of some size, while
torch's unblocked int64 GEMM is fastest on small operands and slows as they leave the
cache: on a corner of 64 x 1,024 x 48 the two ran within 20% of each other (2 cores of an
AMD EPYC with AVX2, Dec 8), on the whole BERT one-hot lookup (128 x 30,522 x 768) the
limbs are 30x faster.  A near tie on such a corner let a busy party keep the int64 GEMM and
spend 30 s per lookup while its peers waited (their receives timed out).  So a corner keeps
at least :data:`CORNER_SIDE` rows and columns and :data:`CORNER_INNER` inner terms where the
product has them (64 x 2,048 x 64: the limbs win by 3x), and :data:`MEASURE_MACS` is large
enough for that corner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MEASURE_MACS = 1 << 23
"""Products above this many multiply-adds are timed on a corner of about this size."""
TIMED_RUNS = 2
"""Timed runs per candidate after its warm-up; the fastest counts (a first call in a
process can be slow for reasons that have nothing to do with the kernel)."""
CORNER_SIDE = 64
CORNER_INNER = 1024


def _bucket(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def shape_class(a: torch.Tensor, b: torch.Tensor) -> tuple:
    """(device, batched b?, rows, inner, columns) with sizes rounded up to powers of two."""
    rows = a.numel() // max(a.shape[-1], 1)
    columns = b.shape[-1] if b.dim() > 1 else 1
    batch = b.numel() // max(b.shape[-1] * (b.shape[-2] if b.dim() > 1 else 1), 1)
    return (str(a.device), _bucket(batch), _bucket(rows), _bucket(a.shape[-1]), _bucket(columns))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Choice:
    """The kernel kept for one shape class and the seconds each candidate took."""

    name: str
    seconds: dict[str, float]
    failures: dict[str, str] = field(default_factory=dict)


class KernelChooser:
    """Call the fastest of ``kernels`` for each shape class, measured on first use."""

    def __init__(self, kernels: dict[str, Kernel]):
        self.kernels = kernels
        self.choices: dict[tuple, Choice] = {}
        self._lock = threading.Lock()

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        key = shape_class(a, b)
        choice = self.choices.get(key)
        if choice is None:
            # One measurement at a time: the parties share the device, and concurrent
            # timings would measure each other.
            with self._lock:
                choice = self.choices.get(key)
                if choice is None:
                    choice, out = self._measure(a, b)
                    self.choices[key] = choice
                    return out
        return self.kernels[choice.name](a, b)

    def _measure(self, a: torch.Tensor, b: torch.Tensor) -> tuple[Choice, torch.Tensor]:
        seconds: dict[str, float] = {}
        failures: dict[str, str] = {}
        outputs: dict[str, torch.Tensor] = {}
        a_timed, b_timed = measured_corner(a, b)
        whole = a_timed is a and b_timed is b
        for name, kernel in self.kernels.items():
            try:
                kernel(a_timed, b_timed)
                synchronize(a.device)
                best = float("inf")
                for _ in range(TIMED_RUNS):
                    start = time.perf_counter()
                    outputs[name] = kernel(a_timed, b_timed)
                    synchronize(a.device)
                    best = min(best, time.perf_counter() - start)
                seconds[name] = best
            except RuntimeError as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
        if not seconds:
            raise RuntimeError(f"no ring GEMM kernel ran for {shape_class(a, b)}: {failures}")
        best = min(seconds, key=seconds.__getitem__)
        out = outputs[best] if whole else self.kernels[best](a, b)
        return Choice(best, seconds, failures), out


def _macs(a: torch.Tensor, b: torch.Tensor) -> int:
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]).numel()
    return batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


def measured_corner(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)``, or for a product above :data:`MEASURE_MACS` multiply-adds a corner of
    about that size: rows and columns are halved first (each down to :data:`CORNER_SIDE`),
    then the inner dimension (down to :data:`CORNER_INNER`, so that blocked kernels still run
    whole blocks), then rows and columns again; batch dimensions are kept."""
    if a.dim() < 2 or b.dim() < 2 or _macs(a, b) <= MEASURE_MACS:
        return a, b
    rows, inner, columns = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = _macs(a, b) // (rows * inner * columns)
    while batch * rows * inner * columns > MEASURE_MACS:
        if max(rows, columns) > CORNER_SIDE:
            floor = CORNER_SIDE  # never below the side: a 64 x 48 corner misleads (above)
        elif inner > CORNER_INNER:
            inner = max(CORNER_INNER, (inner + 1) // 2)
            continue
        elif max(rows, columns) > 1:
            floor = 1
        else:
            break
        if rows >= columns:
            rows = max(floor, (rows + 1) // 2)
        else:
            columns = max(floor, (columns + 1) // 2)
    return a[..., :rows, :inner], b[..., :inner, :columns]
