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
Cost (symmetric): segment bits (5 rounds beside the powers, 2 * 26.3 = 52.6 bytes), powers
x^2, x^4, x^6 | x^8, x^10 (4 levels of 2 rounds, 5 products: 106.7 bytes), one truncation
for the polynomial (2 rounds, 16 bytes), selection (1 round, 2 * 21.3 = 42.7 bytes): 217.9
bytes per element per party; 11 critical-path rounds (16 with the comparison before the
powers; 21 with the 10-round comparison).
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


def gelu_twin(
    x: torch.Tensor, variant: str = "symmetric", frac_bits: int | None = FRAC_BITS
) -> torch.Tensor:
    """Float twin of :func:`gelu`."""
    _check(variant)
    x = x.to(torch.float64)
    x2 = quantize(x * x, frac_bits)
    if variant == "symmetric":
        x4 = quantize(x2 * x2, frac_bits)
        x6, x8 = quantize(x4 * x2, frac_bits), quantize(x4 * x4, frac_bits)
        x10 = quantize(x8 * x2, frac_bits)
        terms = (x, x2, x4, x6, x8, x10)
        coeffs = encoded_coefficients(GELU_SYMMETRIC, frac_bits)  # x^10's is 9.4e-6
        inner = quantize(sum(c * t for c, t in zip(coeffs, terms)), frac_bits)
        return symmetric_select_twin(
            x, GELU_SYMMETRIC_BOUND, inner + GELU_SYMMETRIC_CONSTANT, frac_bits
        )
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
            bits, powers = lockstep(
                party,
                lambda link: less_than_bits_steps(link, symmetric_stack(x, GELU_SYMMETRIC_BOUND), 0),
                lambda link: _even_powers_steps(link, x),
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
    """x^2, x^4, x^6, x^8, x^10 in four product levels, as steps."""
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
