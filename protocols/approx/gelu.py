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

Valid range: all x (|x| < 2^(63-f)); far outside [-4, 3] the powers overflow the ring but
cancel exactly in the segment combination (see :mod:`protocols.approx._piecewise`).
Error: twin vs erf-GeLU: max 0.0199 on [-10, 10] (at the segment joins; 0.0195 vs the tanh
form).  Protocol vs twin: about 1e-5 (coefficients times one-ulp truncation errors).
Cost: segment bits (10 rounds, 360 bytes), powers x^2 | x^3, x^4 | x^6 (3 levels of
1 + 2 rounds, 4 products: 96 bytes), one truncation for both polynomials (2 rounds,
32 bytes), selection (1 round, 24 bytes): 22 rounds, 512 bytes per element per party.
"""

from __future__ import annotations

import torch

from mpc.arith import ArithShare
from protocols.approx._common import FRAC_BITS, linear_combination, products, quantize
from protocols.approx._piecewise import segment_bits, select, select_twin

GELU_BOUNDS = (-4.0, -1.95, 3.0)
# F0 on [-4, -1.95): coefficients of x, x^2, x^3 and the constant.
GELU_F0 = (-0.42226581151983866, -0.11807612951181953, -0.011034134030615728)
GELU_F0_CONSTANT = -0.5054031199708174
# F1 on [-1.95, 3]: coefficients of x, x^2, x^4, x^6 and the constant.
GELU_F1 = (0.5, 0.3603292692789629, -0.037688200365904236, 0.0018067462606141187)
GELU_F1_CONSTANT = 0.008526321541038084


def gelu_twin(x: torch.Tensor, frac_bits: int | None = FRAC_BITS) -> torch.Tensor:
    """Float twin of :func:`gelu`."""
    x = x.to(torch.float64)
    x2 = quantize(x * x, frac_bits)
    x3, x4 = quantize(x2 * x, frac_bits), quantize(x2 * x2, frac_bits)
    x6 = quantize(x3 * x3, frac_bits)
    f0 = quantize(sum(c * t for c, t in zip(GELU_F0, (x, x2, x3))), frac_bits) + GELU_F0_CONSTANT
    f1 = quantize(sum(c * t for c, t in zip(GELU_F1, (x, x2, x4, x6))), frac_bits) + GELU_F1_CONSTANT
    return select_twin(x, GELU_BOUNDS, f0, f1, frac_bits)


def gelu(x: ArithShare) -> ArithShare:
    """PUMA's GeLU of a secret fixed-point tensor (see the module docstring)."""
    with x.party.comm.scope("gelu"):
        bits = segment_bits(x, GELU_BOUNDS)
        (x2,) = products([(x, x)])
        x3, x4 = products([(x2, x), (x2, x2)])
        (x6,) = products([(x3, x3)])
        f0 = linear_combination((x, x2, x3), GELU_F0, GELU_F0_CONSTANT)
        f1 = linear_combination((x, x2, x4, x6), GELU_F1, GELU_F1_CONSTANT)
        return select(x, bits, f0, f1)
