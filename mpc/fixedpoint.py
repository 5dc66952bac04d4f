"""Fixed-point numbers in the ring Z_2^64, held in ``torch.int64``.

A real x is encoded as round(x * 2^f) mod 2^64 (two's complement), f = ``frac_bits``.
Two's-complement wrap-around of int64 arithmetic *is* the ring arithmetic, so shares
are added and multiplied with ordinary torch ops.

Ranges (k = 64):
- encoding accepts |x| < 2^(k-2-f) (2^44 for f = 18), the range on which precise
  truncation is valid;
- a product of two encoded values carries 2f fractional bits before truncation, so
  secret products need |x * y| < 2^(k-2-2f) (2^26 for f = 18).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RING_BITS = 64
DEFAULT_FRAC_BITS = 18


class FixedPointRangeError(ValueError):
    """A value cannot be represented in the fixed-point configuration."""


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point configuration: ``frac_bits`` fractional bits in a 64-bit ring."""

    frac_bits: int = DEFAULT_FRAC_BITS

    def __post_init__(self) -> None:
        if not 0 < self.frac_bits <= 30:
            raise ValueError(f"frac_bits must be in 1..30, got {self.frac_bits}")

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    @property
    def max_abs(self) -> float:
        """Largest magnitude accepted by :meth:`encode` (exclusive)."""
        return float(2 ** (RING_BITS - 2 - self.frac_bits))

    def encode(self, values: torch.Tensor | float, device: torch.device | str | None = None) -> torch.Tensor:
        """round(values * 2^f) as int64; raises on NaN, inf, or |value| >= max_abs."""
        t = torch.as_tensor(values, dtype=torch.float64, device=device)
        if not torch.isfinite(t).all():
            raise FixedPointRangeError("cannot encode NaN or infinity as fixed point")
        if t.numel() and t.abs().max().item() >= self.max_abs:
            raise FixedPointRangeError(
                f"value {t.abs().max().item():.6g} is outside the fixed-point range "
                f"|x| < 2^{RING_BITS - 2 - self.frac_bits} (frac_bits={self.frac_bits})"
            )
        return torch.round(t * self.scale).to(torch.int64)

    def decode(self, ring: torch.Tensor, frac_bits: int | None = None) -> torch.Tensor:
        """Interpret int64 ring elements as signed fixed point with ``frac_bits`` (default f)."""
        bits = self.frac_bits if frac_bits is None else frac_bits
        return ring.to(torch.float64) / float(1 << bits)
