"""SiLU (LLaMA's activation) with PUMA's four-segment piecewise polynomial.

Formula:
    silu(x) = 0                      x < -8
              Q(x)                   -8 <= x < -4
              P(x)                   -4 <= x <= 4
              x                      x > 4
    Q = -0.0055465625580307 x^2 - 0.0819767021525476 x - 0.3067541139982155
    P = 0.0002743776353465 x^6 - 0.011113046708173 x^4 + 0.2281430841728270 x^2 + 0.5 x
        + 0.0085064025895951
Source: PUMA (arXiv 2307.12533) as in SecretFlow-SPU's LLaMA example.

Variant ``"symmetric"`` (ours): silu(x) = x/2 + (x/2) tanh(x/2), the second term even and
tending to |x|/2, so with T = 5
    silu(x) ~ 0 (x < -5);  x/2 + E(x^2) (|x| <= 5);  x (x > 5),
    E(s) = 0.020496548463330284 + 0.21099913255441075 s - 0.007965792174430242 s^2
           + 0.0001388975712446311 s^3      (a minimax fit; PUMA's P is the T = 4 fit).
Two comparisons instead of three: max error 0.0335 on [-12, 12] (vs 0.0719), 199
instead of 270.5 bytes per element, two rounds fewer.

The default is PUMA's formula: the symmetric fit has the smaller *maximum* error but is
2.4x less accurate where activations live (max 0.0205 vs 0.0085 on [-2, 2]; mean 1.3e-2
vs 5.3e-3 on N(0, 1) inputs), and on SmolLM2 that flips greedy tokens that PUMA's
formula keeps (measured with the float twins on the benchmarks/models.py prompt).
``variant="symmetric"`` remains for cost-sensitive use.

Valid range: all x (|x| < 2^(63-f)); see :mod:`veil.protocols.approx._piecewise`.
Error: twin vs x * sigmoid(x): max 0.0719 on [-12, 12] (at x = 4).  Protocol vs twin:
about 1e-5.
Cost: segment bits (10 rounds, 3 * 47.5 = 142.5 bytes), powers x^2 | x^4 | x^6 (3 levels of
1 + 2 rounds, 3 products: 72 bytes), one truncation for both polynomials (2 rounds,
32 bytes), selection (1 round, 24 bytes): 22 rounds (23 at the busiest party), 270.5 bytes
per element per party.
Cost (symmetric): 95 + 72 + 16 + 16 = 199 bytes, 20 rounds (21 at the busiest party;
measured).
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare
from veil.protocols.approx._common import FRAC_BITS, linear_combination, products, quantize
from veil.protocols.approx._piecewise import (
    segment_bits,
    select,
    select_twin,
    symmetric_bits,
    symmetric_select,
    symmetric_select_twin,
)

SILU_BOUNDS = (-8.0, -4.0, 4.0)
# Q on [-8, -4): coefficients of x, x^2 and the constant.
SILU_Q = (-0.0819767021525476, -0.0055465625580307)
SILU_Q_CONSTANT = -0.3067541139982155
# P on [-4, 4]: coefficients of x, x^2, x^4, x^6 and the constant.
SILU_P = (0.5, 0.2281430841728270, -0.011113046708173, 0.0002743776353465)
SILU_P_CONSTANT = 0.0085064025895951
SILU_SYMMETRIC_BOUND = 5.0
# E(x^2) on [-5, 5] plus x/2: coefficients of x, x^2, x^4, x^6 and the constant.
SILU_SYMMETRIC = (0.5, 0.21099913255441075, -0.007965792174430242, 0.0001388975712446311)
SILU_SYMMETRIC_CONSTANT = 0.020496548463330284
VARIANTS = ("puma", "symmetric")


def silu_twin(
    x: torch.Tensor, variant: str = "puma", frac_bits: int | None = FRAC_BITS
) -> torch.Tensor:
    """Float twin of :func:`silu`."""
    _check(variant)
    x = x.to(torch.float64)
    x2 = quantize(x * x, frac_bits)
    x4 = quantize(x2 * x2, frac_bits)
    x6 = quantize(x4 * x2, frac_bits)
    if variant == "symmetric":
        terms = (x, x2, x4, x6)
        inner = quantize(sum(c * t for c, t in zip(SILU_SYMMETRIC, terms)), frac_bits)
        return symmetric_select_twin(
            x, SILU_SYMMETRIC_BOUND, inner + SILU_SYMMETRIC_CONSTANT, frac_bits
        )
    q = quantize(sum(c * t for c, t in zip(SILU_Q, (x, x2))), frac_bits) + SILU_Q_CONSTANT
    p = quantize(sum(c * t for c, t in zip(SILU_P, (x, x2, x4, x6))), frac_bits) + SILU_P_CONSTANT
    return select_twin(x, SILU_BOUNDS, q, p, frac_bits)


def _check(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown SiLU variant {variant!r}: expected one of {VARIANTS}")


def silu(x: ArithShare, variant: str = "puma") -> ArithShare:
    """SiLU of a secret fixed-point tensor (see the module docstring)."""
    _check(variant)
    with x.party.comm.scope("silu"):
        symmetric = variant == "symmetric"
        bits = (
            symmetric_bits(x, SILU_SYMMETRIC_BOUND) if symmetric else segment_bits(x, SILU_BOUNDS)
        )
        (x2,) = products([(x, x)])
        (x4,) = products([(x2, x2)])
        (x6,) = products([(x4, x2)])
        if symmetric:
            inner = linear_combination((x, x2, x4, x6), SILU_SYMMETRIC, SILU_SYMMETRIC_CONSTANT)
            return symmetric_select(x, bits, inner)
        q = linear_combination((x, x2), SILU_Q, SILU_Q_CONSTANT)
        p = linear_combination((x, x2, x4, x6), SILU_P, SILU_P_CONSTANT)
        return select(x, bits, q, p)
