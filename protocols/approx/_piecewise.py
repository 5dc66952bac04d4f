"""Piecewise polynomials for GeLU and SiLU: PUMA's four segments, and a symmetric variant.

PUMA's shape (four segments, three comparisons):
    f(x) = 0 for x < a;  P0(x) on [a, b);  P1(x) on [b, c];  x for x > c.

The three segment bits come from one batched comparison; with s_a = [x < a], s_b = [x < b],
s_c = [x > c],
    f = P1 + s_b (P0 - P1) - s_a P0 + s_c (x - P1),
three products of a bit with a fixed-point value (one round, no truncation: the boolean
bits go straight into :func:`veil.protocols.select.mux_bits`, with no B2A).  The
ring identities are exact, so far outside [a, c], where the powers of x overflow the ring,
the garbage cancels exactly and f is 0 or x.

Symmetric shape (three segments, two comparisons): GeLU and SiLU are x/2 plus an even
function that tends to |x|/2 (x/2 erf(x/sqrt 2), x/2 tanh(x/2)), so
    f(x) = 0 for x < -T;  h(x) = x/2 + E(x^2) on [-T, T];  x for x > T,
    f = h + s_hi (x - h) - s_lo h,   s_lo = [x < -T], s_hi = [x > T]
(two products of a boolean bit with a fixed-point value, one round, no truncation).
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare, cat, stack
from veil.mpc.boolean import BoolShare
from veil.protocols.approx._common import quantize
from veil.protocols.comparison import less_than_bits
from veil.protocols.select import mux_bits


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


def segment_stack(x: ArithShare, bounds: tuple[float, float, float]) -> ArithShare:
    """x - a, x - b, c - x stacked (3, ...): negative where x < a, x < b, x > c."""
    a, b, c = bounds
    return cat([(x - a).unsqueeze(0), (x - b).unsqueeze(0), (c - x).unsqueeze(0)], dim=0)


def segment_bits(x: ArithShare, bounds: tuple[float, float, float]) -> BoolShare:
    """[x < a], [x < b], [x > c] stacked (3, ...), boolean, in one comparison without its
    B2A (5 rounds, 3 * 26.3 bytes per element)."""
    return less_than_bits(segment_stack(x, bounds), 0)


def select(x: ArithShare, bits: BoolShare, p0: ArithShare, p1: ArithShare) -> ArithShare:
    """Combine the segments: bit injection of the three bits (1 round, 3 * 21.3 bytes per
    element, :func:`veil.protocols.select.mux_bits`)."""
    terms = mux_bits(bits, stack([p0, p0 - p1, x - p1]), 0)
    zeroed, low, high = terms[0], terms[1], terms[2]
    return p1 + low - zeroed + high


def symmetric_select_twin(
    x: torch.Tensor, bound: float, inner: torch.Tensor, frac_bits: int | None
) -> torch.Tensor:
    """Float twin of :func:`symmetric_bits` + :func:`symmetric_select`."""
    t = quantize(torch.tensor(bound, dtype=torch.float64), frac_bits)
    return torch.where(x > t, x, torch.where(x < -t, torch.zeros_like(x), inner))


def symmetric_stack(x: ArithShare, bound: float) -> ArithShare:
    """x + T, T - x stacked (2, ...): negative where x < -T, x > T."""
    return cat([(x + bound).unsqueeze(0), (bound - x).unsqueeze(0)], dim=0)


def symmetric_bits(x: ArithShare, bound: float) -> BoolShare:
    """[x < -T], [x > T] stacked (2, ...), boolean, in one comparison without its B2A
    (5 rounds, 2 * 26.3 bytes per element)."""
    return less_than_bits(symmetric_stack(x, bound), 0)


def symmetric_select(x: ArithShare, bits: BoolShare, inner: ArithShare) -> ArithShare:
    """Combine the three segments: bit injection of the two bits (1 round, 2 * 21.3 bytes
    per element, :func:`veil.protocols.select.mux_bits`)."""
    terms = mux_bits(bits, stack([inner, x - inner]), 0)
    zeroed, high = terms[0], terms[1]
    return inner - zeroed + high
