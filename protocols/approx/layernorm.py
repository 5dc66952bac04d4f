"""LayerNorm and RMSNorm over the last dimension: one rsqrt per row.

Formulas (n = row length):
    LayerNorm: d = x - mean(x),  S = sum(d^2),  y = d * sqrt(n) rsqrt(S + n eps) * gamma + beta
    RMSNorm:   S = sum(x^2),                    y = x * sqrt(n) rsqrt(S + n eps) * gamma
sqrt(n) rsqrt(S + n eps) = rsqrt(S / n + eps) exactly; folding 1/n into rsqrt's public
factor table (free) avoids dividing a small variance by n in fixed point, which would cost
its relative precision (var = 1e-4 is only 26 ulp at f = 18; S = n var is 768 times more).
The mean divides by n with a (50 - f)-bit reciprocal of n (one truncation on one element per
row); S is a row dot product (one matmul output per row, truncated once).
Source: PUMA (arXiv 2307.12533) §4.3 (one rsqrt per row), SPU's rsqrt.

Valid range: |mean(x)| < 2^11; S < 2^(62 - 2f) = 2^26 (the row
dot product is summed in the ring before its truncation), i.e. row RMS < 8192 / sqrt(n)
(296 at n = 768); S + n eps in the rsqrt window [2^-8, 2^26); |y| < 1024.
``headroom_bits = h`` truncates the row by h bits before the dot product (2 rounds, 16
bytes per element) and so allows S < 2^(26 + 2h) (row RMS 2^h times larger), at a relative
precision of S of about 2^(h - f) / RMS, for models with massive activations.
Error (128x768, N(0,1) rows scaled per row by 10^U(-2, 2) plus N(0,1) offsets, gamma ~
1 + 0.1 N, beta ~ 0.1 N): protocol vs torch max abs 6e-4 of the output (bound 5e-3); the
terms are rsqrt's 8e-5 relative error and the roundings of gamma (2^-14) and r, each times
|y| (about 5 at most for Gaussian rows); protocol vs twin about the same size, as the
protocol's truncations round up or down where the twin rounds to nearest.
gamma is narrowed once to 13 fractional bits (a truncation of n elements batched with
S's), so x * r (kept at 2f bits) * gamma needs a single elementwise truncation.
Cost per row of n, per party: the mean (2 rounds, 16 bytes) and S, truncated from its
3-out-of-3 components with gamma's narrowing (2 rounds, 21.3 bytes); rsqrt (15 rounds,
68.9 * 33 + 122.7 = 2396.4 bytes; with ``bracket="bits"`` 22 rounds and
152 + 10.67 * 34 + 122.7 = 637.3 bytes); then two elementwise products, the second truncated from its
3-out-of-3 components (3 rounds, 8 + 21.3 bytes per element; without gamma one such
product, 2 rounds and 21.3 bytes).  Narrowing gamma adds 21.3 bytes per element of gamma,
once per call.
Measured, 128x768 (benchmarks/nonlinear.py): 22 critical-path rounds, 3.21 MB; with
``bracket="bits"`` 32 rounds, 2.99 MB; without the affine step (gamma and beta folded into
the next linear layer by the model owner) 21 rounds, 2.41 MB.  SPU's PUMA: 55 send steps,
3.2 MB.
"""

from __future__ import annotations

import math

import torch

from veil.mpc.arith import ArithShare
from veil.protocols.approx._common import (
    FRAC_BITS,
    products,
    quantize,
    truncate_components,
    with_frac,
)
from veil.protocols.approx.rsqrt import rsqrt, rsqrt_twin
from veil.protocols.multiplication import local_product
from veil.protocols.truncation import truncate

MEAN_RANGE_BITS = 50
"""The public 1/n of the row mean gets 50 - f fractional bits (32 at f = 18): |mean| < 2^11."""
OUTPUT_RANGE_BITS = 52
"""x (f bits) * r (f + 3 bits) * gamma (G bits) must stay below 2^62 for |y| < 2^10, so
G = 52 - 2f - 3 (13 at f = 18).  gamma is narrowed to G bits once (a truncation of n
elements, shared with a per-row truncation) so that x * r * gamma needs one elementwise
truncation, not two; its rounding is a relative error of about 1e-4 of the output."""
MIN_GAMMA_BITS = 12
"""Below this (f > 18) gamma keeps f bits and x * r is truncated on its own."""
RSQRT_EXTRA_BITS = 3
"""r = rsqrt(var + eps) carries f + 3 bits (5e-5 relative at r = 0.01, variance 1e4).
Measured max abs error (E extra bits of r, G of gamma; E + G = 16 keeps |y| < 1024):
(0, 16) 9.2e-4 on 1e-2..1e2 rows, 9.9e-3 on RMS-1000 rows; (2, 14) 6.1e-4, 2.0e-3;
(3, 13) 5.6e-4, 4.1e-4; (4, 12) 9.9e-4, 1.1e-3."""
NORM_LO_EXP = -8
NORM_HI_EXP = 26


def _mean_bits(f: int) -> int:
    return MEAN_RANGE_BITS - f


def _gamma_bits(f: int) -> int | None:
    """Fractional bits gamma is narrowed to, or None for two elementwise truncations."""
    bits = min(f, OUTPUT_RANGE_BITS - 2 * f - RSQRT_EXTRA_BITS)
    return bits if bits >= MIN_GAMMA_BITS else None


def _row_dot(x: ArithShare, headroom_bits: int) -> torch.Tensor:
    """This party's 3-out-of-3 component of sum((x / 2^h)^2) over the last dim, shape
    (..., 1), with 2f fractional bits: no message until it is truncated (2 rounds)."""
    if headroom_bits:
        x = with_frac(truncate(x, headroom_bits), x.frac_bits)
    return local_product(x.data.unsqueeze(-2), x.data.unsqueeze(-1), torch.matmul).squeeze(-1)


def _sum_sq_and_gamma(
    x: ArithShare, headroom_bits: int, gamma: ArithShare | None
) -> tuple[ArithShare, ArithShare | None]:
    """S / 4^h truncated to f bits, and gamma narrowed, in one truncation (2 rounds)."""
    f = x.frac_bits
    parts = [(_row_dot(x, headroom_bits), f, f)]
    narrowing = [(g, shift) for g, shift in _narrow(gamma) if shift > 0]
    parts += [(g.data[0], shift, g.frac_bits - shift) for g, shift in narrowing]
    sum_sq, *narrowed = truncate_components(x.party, parts)
    return sum_sq, (narrowed[0] if narrowed else gamma)


def _normalise(
    x: ArithShare,
    sum_sq: ArithShare,
    gamma: ArithShare | None,
    eps: float,
    headroom_bits: int,
    bracket: str,
) -> ArithShare:
    """x * sqrt(n) rsqrt(S + n eps) [* gamma], with sum_sq = S / 4^h, gamma narrowed."""
    n = x.shape[-1]
    f = x.frac_bits
    lift = 2.0**headroom_bits
    r = rsqrt(
        sum_sq + n * eps / lift**2,
        NORM_LO_EXP,
        NORM_HI_EXP,
        math.sqrt(n) / lift,
        RSQRT_EXTRA_BITS,
        bracket,
    )
    if gamma is None or gamma.frac_bits == f and _gamma_bits(f) is None:
        (y,) = products([(x, r)], out_frac=[f])
        return y if gamma is None else products([(y, gamma)])[0]
    # Untruncated (2f + 3 bits, |x r| <= sqrt(n)); the one truncation follows gamma.
    (scaled,) = products([(x, r)], out_frac=[2 * f + RSQRT_EXTRA_BITS])
    (y,) = products([(scaled, gamma)], out_frac=[f])
    return y


def _narrow(gamma: ArithShare | None) -> list[tuple[ArithShare, int]]:
    """gamma with the shift that narrows it to _gamma_bits (nothing to do if absent)."""
    if gamma is None:
        return []
    bits = _gamma_bits(gamma.party.fxp.frac_bits)
    return [(gamma, 0 if bits is None else gamma.frac_bits - bits)]


def _normalise_twin(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    headroom_bits: int,
    frac_bits: int | None,
) -> torch.Tensor:
    n = x.shape[-1]
    lift = 2.0**headroom_bits
    narrow = quantize(x / lift, frac_bits)
    sum_sq = quantize((narrow * narrow).sum(-1, keepdim=True), frac_bits)
    offset = quantize(torch.tensor(n * eps / lift**2, dtype=torch.float64), frac_bits)
    r = rsqrt_twin(
        sum_sq + offset, NORM_LO_EXP, NORM_HI_EXP, math.sqrt(n) / lift, frac_bits, RSQRT_EXTRA_BITS
    )
    if weight is None:
        return quantize(x * r, frac_bits)
    weight = weight.to(torch.float64)
    if frac_bits is None:
        return x * r * weight
    bits = _gamma_bits(frac_bits)
    if bits is None:
        return quantize(quantize(x * r, frac_bits) * weight, frac_bits)
    return quantize(x * r * quantize(weight, bits), frac_bits)


def layernorm_twin(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    headroom_bits: int = 0,
    frac_bits: int | None = FRAC_BITS,
) -> torch.Tensor:
    """Float twin of :func:`layernorm`."""
    x = quantize(x.to(torch.float64), frac_bits)
    n = x.shape[-1]
    mean_bits = _mean_bits(FRAC_BITS if frac_bits is None else frac_bits)
    mean = quantize(x.sum(-1, keepdim=True) * (round(2**mean_bits / n) / 2**mean_bits), frac_bits)
    y = _normalise_twin(x - mean, weight, eps, headroom_bits, frac_bits)
    return y if bias is None else y + bias


def layernorm(
    x: ArithShare,
    weight: ArithShare | None,
    bias: ArithShare | None,
    eps: float = 1e-5,
    headroom_bits: int = 0,
    bracket: str = "compare",
) -> ArithShare:
    """LayerNorm of secret rows with secret gamma (``weight``) and beta (``bias``).

    ``bracket`` is rsqrt's bit-length method: "compare" (fewest rounds) or "bits" (6 rounds
    more, 3.01 instead of 3.12 MB for 128x768).

    ``weight=None`` (and ``bias=None``) skips the affine step, for a model owner who folds
    gamma and beta into the next linear layer before sharing it: 21.3 instead of 29.3 bytes
    per element.
    """
    with x.party.comm.scope("layernorm"):
        n = x.shape[-1]
        # total / n: multiply by round(2^mean_bits / n), truncate (with gamma's narrowing).
        mean_bits = _mean_bits(x.frac_bits)
        total = with_frac(x.sum(-1, keepdim=True), 0) * round(2**mean_bits / n)
        mean = truncate(with_frac(total, x.frac_bits + mean_bits), mean_bits)
        d = x - mean
        sum_sq, gamma = _sum_sq_and_gamma(d, headroom_bits, weight)
        y = _normalise(d, sum_sq, gamma, eps, headroom_bits, bracket)
        return y if bias is None else y + bias


def rmsnorm_twin(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float = 1e-6,
    headroom_bits: int = 0,
    frac_bits: int | None = FRAC_BITS,
) -> torch.Tensor:
    """Float twin of :func:`rmsnorm`."""
    x = quantize(x.to(torch.float64), frac_bits)
    return _normalise_twin(x, weight, eps, headroom_bits, frac_bits)


def rmsnorm(
    x: ArithShare,
    weight: ArithShare | None,
    eps: float = 1e-6,
    headroom_bits: int = 0,
    bracket: str = "compare",
) -> ArithShare:
    """RMSNorm of secret rows with secret gamma (``weight``; None: gamma folded elsewhere)."""
    with x.party.comm.scope("rmsnorm"):
        sum_sq, gamma = _sum_sq_and_gamma(x, headroom_bits, weight)
        return _normalise(x, sum_sq, gamma, eps, headroom_bits, bracket)
