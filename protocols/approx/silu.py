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

Valid range: all x (|x| < 2^(63-f)); see :mod:`protocols.approx._piecewise`.
Error: twin vs x * sigmoid(x): max 0.0719 on [-12, 12] (at x = 4).  Protocol vs twin:
about 1e-5.
Cost: segment bits (10 rounds, 360 bytes), powers x^2 | x^4 | x^6 (3 levels of 1 + 2
rounds, 3 products: 72 bytes), one truncation for both polynomials (2 rounds, 32 bytes),
selection (1 round, 24 bytes): 22 rounds, 488 bytes per element per party.
"""

from __future__ import annotations

import torch

from mpc.arith import ArithShare
from protocols.approx._common import FRAC_BITS, linear_combination, products, quantize
from protocols.approx._piecewise import segment_bits, select, select_twin

SILU_BOUNDS = (-8.0, -4.0, 4.0)
# Q on [-8, -4): coefficients of x, x^2 and the constant.
SILU_Q = (-0.0819767021525476, -0.0055465625580307)
SILU_Q_CONSTANT = -0.3067541139982155
# P on [-4, 4]: coefficients of x, x^2, x^4, x^6 and the constant.
SILU_P = (0.5, 0.2281430841728270, -0.011113046708173, 0.0002743776353465)
SILU_P_CONSTANT = 0.0085064025895951


def silu_twin(x: torch.Tensor, frac_bits: int | None = FRAC_BITS) -> torch.Tensor:
    """Float twin of :func:`silu`."""
    x = x.to(torch.float64)
    x2 = quantize(x * x, frac_bits)
    x4 = quantize(x2 * x2, frac_bits)
    x6 = quantize(x4 * x2, frac_bits)
    q = quantize(sum(c * t for c, t in zip(SILU_Q, (x, x2))), frac_bits) + SILU_Q_CONSTANT
    p = quantize(sum(c * t for c, t in zip(SILU_P, (x, x2, x4, x6))), frac_bits) + SILU_P_CONSTANT
    return select_twin(x, SILU_BOUNDS, q, p, frac_bits)


def silu(x: ArithShare) -> ArithShare:
    """PUMA's SiLU of a secret fixed-point tensor (see the module docstring)."""
    with x.party.comm.scope("silu"):
        bits = segment_bits(x, SILU_BOUNDS)
        (x2,) = products([(x, x)])
        (x4,) = products([(x2, x2)])
        (x6,) = products([(x4, x2)])
        q = linear_combination((x, x2), SILU_Q, SILU_Q_CONSTANT)
        p = linear_combination((x, x2, x4, x6), SILU_P, SILU_P_CONSTANT)
        return select(x, bits, q, p)
