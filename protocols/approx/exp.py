"""exp(x) for x <= 0: PUMA's clipped limit formula, with a quadratic first step.

Formula (``base="quadratic"``, the default): with y = x / 2^t,
    exp(x) ~ p(y)^(2^t),  p(y) = 1 + y + y^2/2 = ((1 + y)^2 + 1) / 2,
and 0 for x < -14 (PUMA's clip; exp(-14) = 8.3e-7).  ``base="linear"`` is PUMA's and
CrypTen's (1 + x/2^t)^(2^t) (arXiv 2307.12533 §4; SPU ``exp_taylor_series``).

Why quadratic: log p(y) = y - y^3/6 + O(y^4), so the relative error is about
-x^3 / (6 * 4^t) instead of the linear base's -x^2 / 2^(t+1).  For the same number of
squarings it is far more accurate.  Measured (errors: float64 twin with f = 18 rounding;
softmax on 12x128x128 rows of logits ~ N(0, 3^2), causal rows alike; cost per element per
party with the clip / without it, from the communicator counters):

    variant                products  rounds   bytes          exp err [-14, 0]  softmax err
    linear,    t = 5 (PUMA)    5      11 / 10  154.3 / 106.7   8.6e-3          6.6e-2
    linear,    t = 8           8      17 / 16  218.3 / 170.7   1.1e-3          8.2e-3
    quadratic, t = 4           5      11 / 10  154.3 / 106.7   1.0e-3          2.0e-2
    quadratic, t = 5           6      13 / 12  175.6 / 128     2.4e-4          4.0e-3  <- default
    quadratic, t = 6           7      15 / 14  196.9 / 149.3   1.5e-4          9.2e-4
    quadratic, t = 7           8      17 / 16  218.3 / 170.7   3.0e-4          2.3e-4
    poly8,     t = 2           6      11 / -   175.6 / -       2.0e-5          3.0e-5  <- softmax's

(rounds: critical path, with the clip / without; every product is truncated from its
3-out-of-3 components, 2 rounds and 21.3 bytes, see protocols/truncation.py; the clip's
comparison runs beside the squarings and adds only its multiplexer's round.  Before that,
the clip added 6 rounds: 18 for quadratic t = 5)

``base="poly8"`` (t = 2 only or more, always with the clip): q(v) ~ exp(2 (v - 1)) with
v = 1 + x / 8 in [-0.75, 1] on the clipped range, a degree-8 Chebyshev fit (3.7e-7 max
error; see :func:`poly_coefficients`) evaluated as A(v) + v^4 B(v): 3 product levels (the
last one a single truncation of A plus the local product v^4 B), then 2 squarings.  12x
more accurate than quadratic t = 5 in 2 rounds fewer and the same bytes; softmax's choice
(measured on 20000 points of [-16, 0]: 11 rounds, 175.6 bytes per element, 2.0e-5 max abs
error, 3.1e-5 protocol vs twin).

So quadratic t = 5 meets the softmax bound (0.01) with 2.5x margin for one product more
than PUMA's t = 5 (and two fewer than linear t = 8, the cheapest linear variant that
passes, and that one only just).  No variant needs a separate truncation for x / 2^t: x is
read with f + t fractional bits (free) and the first product is truncated by f + 2t.

Valid range: any x <= 0 (x < -14 gives exactly 0 through the multiplexer, whatever the
squarings produced).  Without the clip (``clip=None``) the quadratic base is accurate
(measured max abs error) on [-50, 0] for t = 5 (2.4e-4), [-120, 0] for t = 6 (3.4e-4),
[-220, 0] for t = 7 (2.3e-4), and garbage below -2^(t+1) where |1 + x/2^t| > 1; that
variant needs a caller that bounds x, e.g. softmax logits with a known spread.
Error: twin vs exp: the table above; protocol vs twin: at most about 2^(t+1) ulp (each
truncation is off by at most one ulp, and every later squaring doubles a relative error);
measured 1.1e-4 for t = 5.
Cost: the table above (quadratic t = 5: 6 products with truncation, 128 bytes; the
clip's MSB, 5 rounds beside the squarings and 26.3 bytes, kept boolean into one multiplexer by bit injection,
1 round and 21.3 bytes, :func:`veil.protocols.select.mux_bits`; measured 176.2 bytes for
2003 elements).  ``untruncated=True``
leaves the last product untruncated (8 instead of 21.3 bytes, 1 round instead of 2) for a
caller that multiplies the result again (softmax).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from numpy.polynomial import chebyshev, polynomial

from veil.mpc.arith import ArithShare
from veil.mpc.lockstep import RoundLink, Steps, lockstep, run_alone
from veil.protocols.approx._common import FRAC_BITS, products_steps, quantize, with_frac
from veil.protocols.comparison import less_than_bits_steps
from veil.protocols.multiplication import local_product
from veil.protocols.select import mux_bits
from veil.protocols.truncation import truncate_product_steps

EXP_CLIP = -14.0
"""Below this exp(x) is taken as 0 (PUMA's T_exp)."""
DEFAULT_SQUARINGS = 5
BASES = ("quadratic", "linear", "poly8")
POLY_DEGREE = 8
POLY_SQUARINGS = 2
"""t for ``base="poly8"``: a degree-8 base on [-14/4, 0] and two squarings."""
POLY_RAW_BITS = 60
"""Fractional bits of poly8's combination before its one truncation (the base is <= 1)."""


@functools.cache
def poly_coefficients(squarings: int = POLY_SQUARINGS, clip: float = EXP_CLIP) -> tuple[float, ...]:
    """Power-basis coefficients c_0..c_8 of q(v) ~ exp(2 (v - 1)) on v in [1 + clip / 2^(t+1), 1].

    Chebyshev interpolation of degree 8 (near-minimax): with t = 2, v in [-0.75, 1] and
    max |q - exp| = 3.7e-7 on it, 1.5e-6 after the two squarings.  exp(x) = q(v)^(2^t) with
    v = 1 + x / 2^(t+1)."""
    lo = 1 + clip / 2 ** (squarings + 1)
    fit = chebyshev.Chebyshev.interpolate(lambda v: np.exp(2 * (v - 1)), POLY_DEGREE, domain=[lo, 1])
    return tuple(float(c) for c in fit.convert(kind=polynomial.Polynomial).coef)


def _poly_encoding(f: int, squarings: int) -> tuple[int, list[int], list[int], int]:
    """(raw bits R, integer weights of the low terms v..v^4, of the high factor's terms
    v..v^4 (for c_5..c_8), encoded constant c_0), exactly as the protocol applies them.

    v carries f + t + 1 fractional bits, v^2..v^4 carry f; low terms land on R bits, the
    high factor B = sum_k c_k v^(k-4) on R - f bits (times v^4 with f bits: R)."""
    coeffs = poly_coefficients(squarings)
    raw = POLY_RAW_BITS
    bits = [f + squarings + 1, f, f, f]  # fractional bits of v, v^2, v^3, v^4
    low = [round(c * 2.0 ** (raw - b)) for c, b in zip(coeffs[1:5], bits)]
    high = [round(c * 2.0 ** (raw - f - b)) for c, b in zip(coeffs[5:9], bits)]
    return raw, low, high, round(coeffs[0] * 2.0**raw)


def exp_twin(
    x: torch.Tensor,
    squarings: int = DEFAULT_SQUARINGS,
    base: str = "quadratic",
    clip: float | None = EXP_CLIP,
    frac_bits: int | None = FRAC_BITS,
    untruncated: bool = False,
) -> torch.Tensor:
    """Float twin of :func:`exp` (rounded where the protocol truncates)."""
    _check_base(base, squarings, clip)
    x = x.to(torch.float64)
    z = base_twin(x, squarings, base, frac_bits)
    last_bits = None if frac_bits is None or untruncated else frac_bits
    for step in range(squarings):
        z = quantize(z * z, last_bits if step == squarings - 1 else frac_bits)
    if clip is not None:
        z = torch.where(x < clip, torch.zeros_like(z), z)
    return z


def base_twin(x: torch.Tensor, squarings: int, base: str, frac_bits: int | None) -> torch.Tensor:
    """Float twin of :func:`base_steps`: the base p(x / 2^t) before the squarings."""
    x = x.to(torch.float64)
    if base == "poly8":
        return _poly_base_twin(x, squarings, frac_bits)
    z = 1 + x / 2**squarings
    if base == "quadratic":
        z = (quantize(z * z, frac_bits) + 1) / 2
    return z


def _poly_base_twin(x: torch.Tensor, squarings: int, frac_bits: int | None) -> torch.Tensor:
    """Float twin of poly8's base q(v), v = 1 + x / 2^(t+1), rounded where the protocol truncates."""
    v = 1 + x / 2 ** (squarings + 1)
    v2 = quantize(v * v, frac_bits)
    powers = [v, v2, quantize(v2 * v, frac_bits), quantize(v2 * v2, frac_bits)]
    if frac_bits is None:
        coeffs = poly_coefficients(squarings)
        low, high, constant = coeffs[1:5], coeffs[5:9], coeffs[0]
    else:
        raw, low_w, high_w, constant_w = _poly_encoding(frac_bits, squarings)
        bits = [frac_bits + squarings + 1, frac_bits, frac_bits, frac_bits]
        low = [w / 2.0 ** (raw - b) for w, b in zip(low_w, bits)]
        high = [w / 2.0 ** (raw - frac_bits - b) for w, b in zip(high_w, bits)]
        constant = constant_w / 2.0**raw
    a = constant + sum(c * p for c, p in zip(low, powers))
    b = sum(c * p for c, p in zip(high, powers))
    return quantize(a + powers[3] * b, frac_bits)


def exp(
    x: ArithShare,
    squarings: int = DEFAULT_SQUARINGS,
    base: str = "quadratic",
    clip: float | None = EXP_CLIP,
    untruncated: bool = False,
) -> ArithShare:
    """exp(x) for secret x <= 0 (see the module docstring for range, error and cost).

    ``untruncated=True`` returns the last square before its truncation, with 2f fractional
    bits, for a caller that multiplies it again and pays one truncation for both (softmax).
    The clip's comparison runs beside the squarings (:mod:`veil.mpc.lockstep`): it depends
    on x alone, so its 5 rounds share the squarings' rounds.
    """
    _check_base(base, squarings, clip)
    party = x.party
    f = party.fxp.frac_bits
    if x.frac_bits != f:
        raise ValueError("exp expects a fixed-point share with f fractional bits")
    with party.comm.scope("exp"):
        def powers(link: RoundLink) -> Steps[ArithShare]:
            return _limit_steps(link, x, squarings, base, untruncated)

        if clip is None:
            return run_alone(party, powers)
        z, below = lockstep(party, powers, lambda link: less_than_bits_steps(link, x, clip))
        return mux_bits(below, 0, z)


def _check_base(base: str, squarings: int, clip: float | None) -> None:
    if base not in BASES:
        raise ValueError(f"unknown exp base {base!r}: expected one of {BASES}")
    if base == "poly8" and (clip is None or squarings < POLY_SQUARINGS):
        raise ValueError("exp base 'poly8' needs the clip and at least 2 squarings (it is fitted on [clip, 0])")


def base_steps(link: RoundLink, x: ArithShare, squarings: int, base: str) -> Steps[ArithShare]:
    """The base p(x / 2^t) (f bits) as steps, before the squarings."""
    f = link.party.fxp.frac_bits
    if base == "poly8":
        return (yield from _poly_base_steps(link, x, squarings))
    # 1 + x / 2^t, read with f + t fractional bits: no truncation needed.
    z = with_frac(x, f + squarings) + 1
    if base == "quadratic":
        (z,) = yield from products_steps(link, [(z, z)])  # (1 + y)^2, truncated by f + 2t
        # p = ((1 + y)^2 + 1) / 2: reading it with f + 1 bits halves it for free.
        z = with_frac(z + 1, f + 1)
    return z


def _poly_base_steps(link: RoundLink, x: ArithShare, squarings: int) -> Steps[ArithShare]:
    """q(v) = A(v) + v^4 B(v) (Paterson-Stockmeyer split of the degree-8 fit), 6 rounds.

    v = 1 + x / 2^(t+1) is x relabelled plus 1 (free); v^2 (level 1), v^3 and v^4 (level 2);
    then one local product v^4 * B with B = c_5 v + .. + c_8 v^4 a public combination, plus
    A = c_0 + c_1 v + .. + c_4 v^4 on the same 3-out-of-3 components, truncated once
    (level 3).  3 products truncated from their components (64 bytes) and one truncation
    of the combination (21.3 bytes) per element per party."""
    party = link.party
    f = party.fxp.frac_bits
    raw, low, high, constant = _poly_encoding(f, squarings)
    v = with_frac(x, f + squarings + 1) + 1
    (v2,) = yield from products_steps(link, [(v, v)])
    v3, v4 = yield from products_steps(link, [(v2, v), (v2, v2)])
    powers = [v, v2, v3, v4]
    factor = sum((with_frac(p, 0) * w for p, w in zip(powers[1:], high[1:])), with_frac(v, 0) * high[0])
    components = local_product(v4.data, factor.data)
    for p, w in zip(powers, low):
        components += p.data[0] * w
    if party.rank == 0:
        components += constant
    return (yield from truncate_product_steps(link, components, raw - f, raw))


def _limit_steps(link: RoundLink, x: ArithShare, squarings: int, base: str, untruncated: bool) -> Steps[ArithShare]:
    """p(x / 2^t)^(2^t) as steps: the first step and the t squarings."""
    f = link.party.fxp.frac_bits
    z = yield from base_steps(link, x, squarings, base)
    for step in range(squarings):
        last = step == squarings - 1
        (z,) = yield from products_steps(link, [(z, z)], out_frac=[2 * f if last and untruncated else f])
    return z
