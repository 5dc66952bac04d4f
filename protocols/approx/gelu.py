"""GeLU with PUMA's four-segment piecewise polynomial (arXiv 2307.12533, eq. 2-3).

Formula:
    gelu(x) = 0                      x < -4
              F0(x)                  -4 <= x < -1.95
              F1(x)                  -1.95 <= x <= 3
              x                      x > 3
    F0 = -0.011034134030615728 x^3 - 0.11807612951181953 x^2 - 0.42226581151983866 x
         - 0.5054031199708174
    F1 = 0.0018067462606141187 x^6 - 0.037688200365904236 x^4 + 0.3603292692789629 x^2
         + 0.5 x + 0.008526321541038084
Both the erf GeLU and the tanh GeLU of Hugging Face models map to it.

Variant ``"symmetric"`` (ours): gelu(x) = x/2 + (x/2) erf(x/sqrt 2), and the second term is
even and tends to |x|/2, so with T = 3.45
    gelu(x) ~ 0 (x < -T);  x/2 + E(x^2) (|x| <= T);  x (x > T),
    E(s) = 0.0009933317651574414 + 0.3919617626530749 s - 0.05842314808578837 s^2
           + 0.006388980226935733 s^3 - 0.00038310600744628754 s^4 + 9.4240887458699e-06 s^5
Fitting: minimax in s = x^2 on [0, T^2] by iteratively reweighted least squares (8000
points, weights grown where the error is largest), T chosen so that the fit's error equals
the tail's (|gelu(x) - x| at x = T and |gelu(x)| at x = -T).  Max error 9.9e-4 on
[-10, 10], against 0.0093 for the quintic-free fit of the previous round (E cubic in s,
T = 3) and 0.0199 for PUMA's: the error budget (``python -m benchmarks.accuracy``) put
99.7% of BERT's, GPT-2's and MiniLM's approximation error on GeLU.  Two comparisons instead
of PUMA's three and no x^3.

The default is the symmetric variant (fewer bytes, smaller error); ``variant="puma"``
gives PUMA's exact four-segment formula above.

Valid range: all x (|x| < 2^(63-f)); far outside [-4, 3] the powers overflow the ring but
cancel exactly in the segment combination (see :mod:`veil.protocols.approx._piecewise`).
Error: twin vs erf-GeLU on [-10, 10]: PUMA max 0.0199 (at the segment joins; 0.0195 vs the
tanh form), symmetric 1.0e-3 (1.4e-3 vs the tanh form).  Protocol vs twin: about 1e-5
(coefficients times one-ulp truncation errors).
Cost (PUMA): segment bits (boolean MSBs, 5 rounds beside the powers, 3 * 26.3 = 78.9
bytes), powers x^2 | x^3, x^4 | x^6 (3 levels of one fused product and truncation, 2 rounds
each; 4 products: 85.3 bytes), one truncation for both polynomials (2 rounds, 32 bytes),
selection (bit injection, 1 round, 3 * 21.3 = 64 bytes): 260.2 bytes per element per
party, 9 critical-path rounds (16 with the comparison before the powers and a truncation
per polynomial; 21 with the 10-round comparison and integer bits).
Cost (symmetric, f <= 18): segment bits (5 rounds beside the powers, 2 * 26.3 = 52.6 bytes),
powers of y = x / 4 (free) with f + 5 bits, y^2 | y^4 | y^6 (3 levels, 64 bytes), then the
last level fused with the polynomial: y^4 (g_8 y^4 + g_10 y^6) as one local product plus
the low terms x/2, y^2, y^4, y^6 on 3-out-of-3 components, truncated once (2 rounds, 21.3
bytes; y^8, y^10 are never formed), selection (1 round, 42.7 bytes): 180.9 bytes per
element per party, 9 critical-path rounds; measured 128x768 (``python -m
benchmarks.nonlinear --only gelu``): 9 rounds, 17.75 MB, error 1.00e-3, protocol vs twin
2 ulp.  Before (x^2, x^4, x^6 | x^8, x^10 at f bits and a separate truncation for the
polynomial; still the path for f > 18): 11 rounds, 217.9 bytes, 21.42 MB.
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.lockstep import RoundLink, Steps, lockstep
from veil.protocols.approx._common import (
    FRAC_BITS,
    encoded_coefficients,
    linear_combination,
    linear_combinations,
    products_steps,
    quantize,
    with_frac,
)
from veil.protocols.approx._piecewise import (
    segment_stack,
    select,
    select_twin,
    symmetric_select,
    symmetric_select_twin,
    symmetric_stack,
)
from veil.protocols.comparison import less_than_bits_steps
from veil.protocols.multiplication import local_product
from veil.protocols.truncation import truncate_product_steps

GELU_BOUNDS = (-4.0, -1.95, 3.0)
# F0 on [-4, -1.95): coefficients of x, x^2, x^3 and the constant.
GELU_F0 = (-0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
GELU_F0_CONSTANT = -0.5054031199708174
# F1 on [-1.95, 3]: coefficients of x, x^2, x^4, x^6 and the constant.
GELU_F1 = (0.5, 0.3603292692789629, -0.037688200365904236, 0.0018067462606141187)
GELU_F1_CONSTANT = 0.008526321541038084
GELU_SYMMETRIC_BOUND = 3.45
# E(x^2) on [-T, T] plus x/2: coefficients of x, x^2, x^4, x^6, x^8, x^10 and the constant.
GELU_SYMMETRIC = (
    0.5,
    0.3919617626530749,
    -0.05842314808578837,
    0.006388980226935733,
    -0.00038310600744628754,
    9.4240887458699e-06,
)
GELU_SYMMETRIC_CONSTANT = 0.0009933317651574414
VARIANTS = ("puma", "symmetric")
POWER_SCALE_BITS = 2
"""The symmetric variant's powers are of y = x / 4 (x relabelled, free): |y| <= 0.87 on the
segment, so the coefficients of y^k (c_k 4^k, at most 26 in size) need few bits."""
POWER_EXTRA_BITS = 5
"""y^2, y^4, y^6 carry f + 5 fractional bits (the coefficients of y^k are up to 26)."""
FUSED_RAW_BITS = 59
"""Fractional bits of the last level's 3-out-of-3 components (|x/2 + E| < 4 on the segment)."""
HIGH_WEIGHT_BITS = 13
"""Least bits the high factor's weights need (R - 2 (f + 5)); f > 18 takes the unfused path."""


def _fused(f: int) -> bool:
    return FUSED_RAW_BITS - 2 * (f + POWER_EXTRA_BITS) >= HIGH_WEIGHT_BITS


def _fused_encoding(f: int) -> tuple[int, int, list[int], list[int], int]:
    """(raw bits R, weight of x, weights of y^2, y^4, y^6 (onto R), of y^4, y^6 inside the
    high factor B = g_8 y^4 + g_10 y^6 (onto R - 2 POWER_BITS, so that y^4 B lands on R),
    constant), with g_k = c_k 4^k the coefficients of y^k."""
    raw, power_bits = FUSED_RAW_BITS, f + POWER_EXTRA_BITS
    scaled = [c * 4.0 ** (2 * k) for k, c in enumerate(GELU_SYMMETRIC[1:], start=1)]  # y^2 .. y^10
    low = [round(g * 2.0 ** (raw - power_bits)) for g in scaled[:3]]
    high = [round(g * 2.0 ** (raw - 2 * power_bits)) for g in scaled[3:]]
    return raw, round(GELU_SYMMETRIC[0] * 2.0 ** (raw - f)), low, high, round(GELU_SYMMETRIC_CONSTANT * 2.0**raw)


def _symmetric_inner_twin(x: torch.Tensor, frac_bits: int | None) -> torch.Tensor:
    """Float twin of :func:`_symmetric_inner_steps`: x/2 + E(x^2), rounded as it truncates."""
    if frac_bits is None:
        terms = [x] + [x ** (2 * k) for k in range(1, 6)]
        return GELU_SYMMETRIC_CONSTANT + sum(c * t for c, t in zip(GELU_SYMMETRIC, terms))
    if not _fused(frac_bits):
        x2 = quantize(x * x, frac_bits)
        x4 = quantize(x2 * x2, frac_bits)
        x6, x8 = quantize(x4 * x2, frac_bits), quantize(x4 * x4, frac_bits)
        terms = (x, x2, x4, x6, x8, quantize(x8 * x2, frac_bits))
        coeffs = encoded_coefficients(GELU_SYMMETRIC, frac_bits)  # x^10's is 9.4e-6
        return quantize(sum(c * t for c, t in zip(coeffs, terms)), frac_bits) + GELU_SYMMETRIC_CONSTANT
    bits = frac_bits + POWER_EXTRA_BITS
    y = x / 2**POWER_SCALE_BITS
    y2 = quantize(y * y, bits)
    y4 = quantize(y2 * y2, bits)
    y6 = quantize(y4 * y2, bits)
    raw, w_x, low, high, constant = _fused_encoding(frac_bits)
    a = (w_x * x) / 2.0 ** (raw - frac_bits) + sum(w * t for w, t in zip(low, (y2, y4, y6))) / 2.0 ** (raw - bits)
    b = (high[0] * y4 + high[1] * y6) / 2.0 ** (raw - 2 * bits)
    return quantize(a + y4 * b + constant / 2.0**raw, frac_bits)


def _symmetric_inner_steps(link: RoundLink, x: ArithShare) -> Steps[ArithShare]:
    """x/2 + E(x^2) with f bits in 4 product levels (8 rounds), as steps: y^2 | y^4 | y^6 |
    then y^4 (g_8 y^4 + g_10 y^6) as one local product plus the low terms, on 3-out-of-3
    components, truncated once (y^8, y^10 and a separate combination are never formed)."""
    party = link.party
    f = party.fxp.frac_bits
    raw, w_x, low, high, constant = _fused_encoding(f)
    bits = f + POWER_EXTRA_BITS
    y = with_frac(x, f + POWER_SCALE_BITS)
    (y2,) = yield from products_steps(link, [(y, y)], out_frac=[bits])
    (y4,) = yield from products_steps(link, [(y2, y2)], out_frac=[bits])
    (y6,) = yield from products_steps(link, [(y4, y2)], out_frac=[bits])
    factor = with_frac(y4, 0) * high[0] + with_frac(y6, 0) * high[1]
    components = local_product(y4.data, factor.data) + x.data[0] * w_x
    for power, weight in zip((y2, y4, y6), low):
        components += power.data[0] * weight
    if party.rank == 0:
        components += constant
    return (yield from truncate_product_steps(link, components, raw - f, raw))


def gelu_twin(
    x: torch.Tensor, variant: str = "symmetric", frac_bits: int | None = FRAC_BITS
) -> torch.Tensor:
    """Float twin of :func:`gelu`."""
    _check(variant)
    x = x.to(torch.float64)
    x2 = quantize(x * x, frac_bits)
    if variant == "symmetric":
        return symmetric_select_twin(x, GELU_SYMMETRIC_BOUND, _symmetric_inner_twin(x, frac_bits), frac_bits)
    x3, x4 = quantize(x2 * x, frac_bits), quantize(x2 * x2, frac_bits)
    x6 = quantize(x3 * x3, frac_bits)
    f0 = quantize(sum(c * t for c, t in zip(GELU_F0, (x, x2, x3))), frac_bits) + GELU_F0_CONSTANT
    f1 = (
        quantize(sum(c * t for c, t in zip(GELU_F1, (x, x2, x4, x6))), frac_bits) + GELU_F1_CONSTANT
    )
    return select_twin(x, GELU_BOUNDS, f0, f1, frac_bits)


def _check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown GeLU variant {variant!r}: expected one of {VARIANTS}")


def gelu(x: ArithShare, variant: str = "symmetric") -> ArithShare:
    """GeLU of a secret fixed-point tensor (see the module docstring).

    The segment comparison depends on x alone, so it runs beside the powers
    (:mod:`veil.mpc.lockstep`): its 5 rounds share theirs.
    """
    _check(variant)
    party = x.party
    with party.comm.scope("gelu"):
        if variant == "symmetric":
            segments = symmetric_stack(x, GELU_SYMMETRIC_BOUND)
            if _fused(party.fxp.frac_bits):
                bits, inner = lockstep(
                    party,
                    lambda link: less_than_bits_steps(link, segments, 0),
                    lambda link: _symmetric_inner_steps(link, x),
                )
            else:
                bits, powers = lockstep(
                    party, lambda link: less_than_bits_steps(link, segments, 0), lambda link: _even_powers_steps(link, x)
                )
                inner = linear_combination((x, *powers), GELU_SYMMETRIC, GELU_SYMMETRIC_CONSTANT)
            return symmetric_select(x, bits, inner)
        bits, (x2, x3, x4, x6) = lockstep(
            party,
            lambda link: less_than_bits_steps(link, segment_stack(x, GELU_BOUNDS), 0),
            lambda link: _puma_powers_steps(link, x),
        )
        f0, f1 = linear_combinations([
            ((x, x2, x3), GELU_F0, GELU_F0_CONSTANT), ((x, x2, x4, x6), GELU_F1, GELU_F1_CONSTANT)
        ])
        return select(x, bits, f0, f1)


def _even_powers_steps(link: RoundLink, x: ArithShare) -> Steps[tuple[ArithShare, ...]]:
    """x^2, x^4, x^6, x^8, x^10 in four product levels, as steps (f > 18)."""
    (x2,) = yield from products_steps(link, [(x, x)])
    (x4,) = yield from products_steps(link, [(x2, x2)])
    x6, x8 = yield from products_steps(link, [(x4, x2), (x4, x4)])
    (x10,) = yield from products_steps(link, [(x8, x2)])
    return x2, x4, x6, x8, x10


def _puma_powers_steps(link: RoundLink, x: ArithShare) -> Steps[tuple[ArithShare, ...]]:
    """x^2, x^3, x^4, x^6 in three product levels, as steps."""
    (x2,) = yield from products_steps(link, [(x, x)])
    x3, x4 = yield from products_steps(link, [(x2, x), (x2, x2)])
    (x6,) = yield from products_steps(link, [(x3, x3)])
    return x2, x3, x4, x6
