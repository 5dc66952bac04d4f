"""Measured choice among bit-exact kernels, once per (device, shape class).

The ring GEMM has several exact forms on a GPU (float64 limbs, int8 tensor-core limbs);
which is fastest depends on the device and on the shapes, so instead of a table the
first product of each shape class times every candidate on its real operands (one
warm-up and one timed run each, synchronised) and keeps the fastest.  A candidate that
raises (e.g. a kernel the device lacks) is dropped for that class.  Every candidate gives
the same ring elements, so parties that choose differently still agree bit for bit.

Shape class: the batch, row, inner and column sizes rounded up to powers of two, so a
model's few dozen distinct products are measured a few dozen times per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
        for name, kernel in self.kernels.items():
            try:
                kernel(a, b)
                synchronize(a.device)
                start = time.perf_counter()
                outputs[name] = kernel(a, b)
                synchronize(a.device)
                seconds[name] = time.perf_counter() - start
            except RuntimeError as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
        if not seconds:
            raise RuntimeError(f"no ring GEMM kernel ran for {shape_class(a, b)}: {failures}")
        best = min(seconds, key=seconds.__getitem__)
        return Choice(best, seconds, failures), outputs[best]
