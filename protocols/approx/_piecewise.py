"""Piecewise polynomials for GeLU and SiLU: PUMA's four segments, and a symmetric variant.

PUMA's shape (four segments, three comparisons):
    f(x) = 0 for x < a;  P0(x) on [a, b);  P1(x) on [b, c];  x for x > c.

The three segment bits come from one batched comparison; with s_a = [x < a], s_b = [x < b],
s_c = [x > c],
    f = P1 + s_b (P0 - P1) - s_a P0 + s_c (x - P1),
three products of an integer bit with a fixed-point value (one round, no truncation).  The
ring identities are exact, so far outside [a, c], where the powers of x overflow the ring,
the garbage cancels exactly and f is 0 or x.

Symmetric shape (three segments, two comparisons): GeLU and SiLU are x/2 plus an even
function that tends to |x|/2 (x/2 erf(x/sqrt 2), x/2 tanh(x/2)), so
    f(x) = 0 for x < -T;  h(x) = x/2 + E(x^2) on [-T, T];  x for x > T,
    f = h + s_hi (x - h) - s_lo h,   s_lo = [x < -T], s_hi = [x > T]
(two products of an integer bit with a fixed-point value, one round, no truncation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from veil.mpc.arith import ArithShare, cat
from veil.protocols.approx._common import products, quantize
from veil.protocols.comparison import less_than


def select_twin(
    x: torch.Tensor,
    bounds: tuple[float, float, float],
    p0: torch.Tensor,
    p1: torch.Tensor,
    frac_bits: int | None,
) -> torch.Tensor:
    """Float twin of :func:`segment_bits` + :func:`select` (bounds on the fixed-point grid)."""
    a, b, c = (quantize(torch.tensor(v, dtype=torch.float64), frac_bits) for v in bounds)
    out = torch.where(x > c, x, p1)
    out = torch.where(x < b, p0, out)
    return torch.where(x < a, torch.zeros_like(x), out)


def segment_bits(x: ArithShare, bounds: tuple[float, float, float]) -> list[ArithShare]:
    """[x < a], [x < b], [x > c] in one comparison (10 rounds, 3 * 47.5 bytes per element)."""
    a, b, c = bounds
    stacked = cat([(x - a).unsqueeze(0), (x - b).unsqueeze(0), (c - x).unsqueeze(0)], dim=0)
    bits = less_than(stacked, 0)
    return [bits[0], bits[1], bits[2]]


def select(x: ArithShare, bits: Sequence[ArithShare], p0: ArithShare, p1: ArithShare) -> ArithShare:
    """Combine the segments (1 round, 24 bytes per element)."""
    below_a, below_b, above_c = bits
    low, zeroed, high = products([(below_b, p0 - p1), (below_a, p0), (above_c, x - p1)])
    return p1 + low - zeroed + high


def symmetric_select_twin(
    x: torch.Tensor, bound: float, inner: torch.Tensor, frac_bits: int | None
) -> torch.Tensor:
    """Float twin of :func:`symmetric_bits` + :func:`symmetric_select`."""
    t = quantize(torch.tensor(bound, dtype=torch.float64), frac_bits)
    return torch.where(x > t, x, torch.where(x < -t, torch.zeros_like(x), inner))


def symmetric_bits(x: ArithShare, bound: float) -> list[ArithShare]:
    """[x < -T], [x > T] in one comparison (10 rounds, 2 * 47.5 bytes per element)."""
    stacked = cat([(x + bound).unsqueeze(0), (bound - x).unsqueeze(0)], dim=0)
    bits = less_than(stacked, 0)
    return [bits[0], bits[1]]


def symmetric_select(x: ArithShare, bits: Sequence[ArithShare], inner: ArithShare) -> ArithShare:
    """Combine the three segments (1 round, 16 bytes per element)."""
    below, above = bits
    zeroed, high = products([(below, inner), (above, x - inner)])
    return inner - zeroed + high
