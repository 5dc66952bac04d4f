"""LayerNorm and RMSNorm over the last dimension: one rsqrt per row.

Formulas (n = row length):
    LayerNorm: d = x - mean(x),  S = sum(d^2),  y = d * sqrt(n) rsqrt(S + n eps) * gamma + beta
    RMSNorm:   S = sum(x^2),                    y = x * sqrt(n) rsqrt(S + n eps) * gamma
sqrt(n) rsqrt(S + n eps) = rsqrt(S / n + eps) exactly; folding 1/n into rsqrt's public
factor table (free) avoids dividing a small variance by n in fixed point, which would cost
its relative precision (var = 1e-4 is only 26 ulp at f = 18; S = n var is 768 times more).
The mean divides by n with a 32-bit reciprocal of n (one truncation on one element per
row); S is a row dot product (one matmul output per row, truncated once).
Source: PUMA (arXiv 2307.12533) §4.3 (one rsqrt per row), SPU's rsqrt.

Valid range: |mean(x)| < 2^(61 - f - MEAN_BITS) = 2048, S < 2^25, S + n eps in the rsqrt window
[2^-8, 2^26) (per-row variance from about 1e-5 to 8e4 at n = 768), |y| < 2^(62-2f).
Error (128x768, N(0,1) rows scaled per row by 10^U(-2, 2), gamma ~ 1 + 0.1 N, beta ~ 0.1 N):
twin vs torch max abs 2e-4 of the output (rsqrt's 8e-5 relative error times |d/sigma|
<= sqrt(n), plus rounding); protocol vs twin a few ulp times |d/sigma|.  Bound 5e-3.
Cost per row of n, per party: the mean (2 rounds, one element), S (3 rounds, one element),
rsqrt (about 25 rounds, 120 * 33 + 120 bytes), then two elementwise products with
truncation (6 rounds, 48 bytes per element).  128x768: see benchmarks/nonlinear.py.
"""

from __future__ import annotations

import math

import torch

from mpc.arith import ArithShare
from protocols.approx._common import FRAC_BITS, products, quantize, truncate_together, with_frac
from protocols.approx.rsqrt import rsqrt, rsqrt_twin

MEAN_BITS = 32
"""Fractional bits of the public 1/n used for the row mean."""
GAMMA_BITS = 16
"""gamma is narrowed to 16 fractional bits (one truncation of n elements, shared with a
per-row truncation) so that x * r * gamma needs one elementwise truncation, not two."""
NORM_LO_EXP = -8
NORM_HI_EXP = 26


def _row_dot(x: ArithShare) -> ArithShare:
    """sum(x^2) over the last dim, shape (..., 1), untruncated (2f bits): one matmul output."""
    return with_frac((with_frac(x, 0).unsqueeze(-2) @ x.unsqueeze(-1)).squeeze(-1), 2 * x.frac_bits)


def _normalise(x: ArithShare, sum_sq: ArithShare, gamma: ArithShare, eps: float) -> ArithShare:
    """x * sqrt(n) rsqrt(sum_sq + n eps) * gamma, gamma with GAMMA_BITS fractional bits."""
    n = x.shape[-1]
    f = x.frac_bits
    r = rsqrt(sum_sq + n * eps, NORM_LO_EXP, NORM_HI_EXP, scale=math.sqrt(n))
    (scaled,) = products([(x, r)], out_frac=[2 * f])  # untruncated: |x r| <= sqrt(n)
    (y,) = products([(scaled, gamma)], out_frac=[f])
    return y


def _narrow(gamma: ArithShare) -> tuple[ArithShare, int]:
    """gamma and the shift that narrows it to GAMMA_BITS fractional bits."""
    return gamma, gamma.frac_bits - GAMMA_BITS


def layernorm_twin(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
    frac_bits: int | None = FRAC_BITS,
) -> torch.Tensor:
    """Float twin of :func:`layernorm`."""
    x = quantize(x.to(torch.float64), frac_bits)
    n = x.shape[-1]
    mean = quantize(x.sum(-1, keepdim=True) * (round(2**MEAN_BITS / n) / 2**MEAN_BITS), frac_bits)
    d = x - mean
    sum_sq = quantize((d * d).sum(-1, keepdim=True), frac_bits)
    r = rsqrt_twin(sum_sq + quantize(torch.tensor(n * eps), frac_bits), NORM_LO_EXP, NORM_HI_EXP,
                   math.sqrt(n), frac_bits)
    return quantize(d * r * quantize(weight, GAMMA_BITS), frac_bits) + bias


def layernorm(x: ArithShare, weight: ArithShare, bias: ArithShare, eps: float = 1e-5) -> ArithShare:
    """LayerNorm of secret rows with secret gamma (``weight``) and beta (``bias``)."""
    with x.party.comm.scope("layernorm"):
        n = x.shape[-1]
        # total / n: multiply by round(2^MEAN_BITS / n), truncate (with gamma's narrowing).
        total = with_frac(x.sum(-1, keepdim=True), 0) * round(2**MEAN_BITS / n)
        mean, gamma = truncate_together(
            [(with_frac(total, x.frac_bits + MEAN_BITS), MEAN_BITS), _narrow(weight)]
        )
        d = x - mean
        (sum_sq,) = truncate_together([(_row_dot(d), x.frac_bits)])
        return _normalise(d, sum_sq, gamma, eps) + bias


def rmsnorm_twin(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, frac_bits: int | None = FRAC_BITS
) -> torch.Tensor:
    """Float twin of :func:`rmsnorm`."""
    x = quantize(x.to(torch.float64), frac_bits)
    n = x.shape[-1]
    sum_sq = quantize((x * x).sum(-1, keepdim=True), frac_bits)
    r = rsqrt_twin(sum_sq + quantize(torch.tensor(n * eps), frac_bits), NORM_LO_EXP, NORM_HI_EXP,
                   math.sqrt(n), frac_bits)
    return quantize(x * r * quantize(weight, GAMMA_BITS), frac_bits)


def rmsnorm(x: ArithShare, weight: ArithShare, eps: float = 1e-6) -> ArithShare:
    """RMSNorm of secret rows with secret gamma (``weight``)."""
    with x.party.comm.scope("rmsnorm"):
        sum_sq, gamma = truncate_together([(_row_dot(x), x.frac_bits), _narrow(weight)])
        return _normalise(x, sum_sq, gamma, eps)
