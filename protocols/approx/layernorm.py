"""LayerNorm and RMSNorm over the last dimension: one reciprocal square root per row.

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
1 + 0.1 N, beta ~ 0.1 N): protocol vs torch max abs 4.7e-4 to 7.2e-4 of the output over runs (the
truncations' carries are random; bound 5e-3; 4.8e-4 before the candidates, 6e-4 when r was
formed first); the terms are rsqrt's 8e-5 relative
error times |y| (about 5 at most for Gaussian rows) and the roundings of x gamma and of the
guess (:func:`veil.protocols.approx.rsqrt_product.precision_split`); protocol vs twin about
the same size, as the protocol's truncations round up or down where the twin rounds to nearest.
The root is never formed on its own
(:func:`veil.protocols.approx.rsqrt_product.rsqrt_product_of_components`): S's components go
in untruncated; every bracket's candidate guess scale / sqrt(S) is computed beside the
bracket's comparisons, the one-hot selects one, and one product by it ends the norm.
Cost per row of n, per party: the mean (2 rounds, 16 bytes); S reshared with its 2f bits
(1 round, 8 bytes) and the bracket on it (5 rounds, 68.9 * 33 bytes; with
``bracket="bits"`` 15 rounds, 152 + 10.67 * 34, on S truncated to f bits) beside the 34
candidates u (2 rounds, 21.3 bytes each) and their w^2 and quartics (4 rounds, 2 * 34 *
21.3 bytes); the select (1 round, 8 bytes); per element x * gamma and the last product,
truncated from 3-out-of-3 components, 21.3 bytes each (one without gamma): 11 rounds in
all (9 for RMSNorm, which has no mean), with or without gamma (12 and 10 when S was
truncated to f bits for the bracket).
Measured, 128x768 (``python -m benchmarks.nonlinear --only layernorm``, Dec 8): 11
critical-path rounds, 4.77 MB, error 7.24e-4 (4.66e-4 in an earlier run); with
``bracket="bits"`` 26 rounds, 4.54 MB; without the affine step 11 rounds, 2.67 MB.
Before (u = S times the bracket's power of two, w^2, the quartic and x f, x f gamma after
the bracket, 3 products per element): 17 rounds, 6.60 MB, error 4.78e-4 (4.50 MB without
the affine step).  Before the quartic took one truncation (u^3, u^4 and then the linear
combination): 19 rounds, 6.60 MB.  Before, with r formed first and then x r * gamma: 22
rounds and 3.21 MB (21 and 2.41 MB without gamma).  SPU's PUMA: 55 send steps, 3.2 MB.
"""

from __future__ import annotations

import math

import torch

from veil.mpc.arith import ArithShare
from veil.protocols.approx._common import (
    FRAC_BITS,
    quantize,
    with_frac,
)
from veil.protocols.approx.rotary import RotaryColumns
from veil.protocols.approx.rsqrt_product import rsqrt_product_of_components, rsqrt_product_twin
from veil.protocols.multiplication import local_product
from veil.protocols.truncation import truncate

MEAN_RANGE_BITS = 50
"""The public 1/n of the row mean gets 50 - f fractional bits (32 at f = 18): |mean| < 2^11."""
NORM_LO_EXP = -8
NORM_HI_EXP = 26


def _mean_bits(f: int) -> int:
    return MEAN_RANGE_BITS - f


def _row_dot(x: ArithShare, headroom_bits: int) -> torch.Tensor:
    """This party's 3-out-of-3 component of sum((x / 2^h)^2) over the last dim, shape
    (..., 1), with 2f fractional bits: no message until it is truncated (2 rounds)."""
    if headroom_bits:
        x = with_frac(truncate(x, headroom_bits), x.frac_bits)
    return local_product(x.data.unsqueeze(-2), x.data.unsqueeze(-1), torch.matmul).squeeze(-1)


def _normalise(
    x: ArithShare,
    gamma: ArithShare | None,
    eps: float,
    headroom_bits: int,
    bracket: str,
    then: ArithShare | None = None,
    keep: bool = False,
    shift: ArithShare | None = None,
    rotate: RotaryColumns | None = None,
) -> ArithShare | tuple[ArithShare, ArithShare]:
    """x * sqrt(n) rsqrt(S + n eps) [* gamma] [@ then], S = sum((x / 2^h)^2) (|x| <= sqrt(S));
    with ``keep`` the pair (normalised, (normalised + shift) @ then).  S goes to rsqrt_product
    as its 3-out-of-3 components with 2f bits: its truncation rides with the candidates'."""
    n = x.shape[-1]
    f = x.frac_bits
    lift = 2.0**headroom_bits
    components = _row_dot(x, headroom_bits)
    if x.party.rank == 0:
        components += round(n * eps / lift**2 * 2.0 ** (2 * f))
    return rsqrt_product_of_components(
        components,
        2 * f,
        x,
        gamma,
        NORM_LO_EXP,
        NORM_HI_EXP,
        scale=math.sqrt(n) / lift,
        bracket=bracket,
        then=then,
        keep=keep,
        shift=shift,
        rotate=rotate,
    )


def _normalise_twin(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    headroom_bits: int,
    frac_bits: int | None,
    then: torch.Tensor | None = None,
    keep: bool = False,
    shift: torch.Tensor | None = None,
    rotate: RotaryColumns | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    lift = 2.0**headroom_bits
    narrow = quantize(x / lift, frac_bits)
    wide = None if frac_bits is None else 2 * frac_bits
    sum_sq = (narrow * narrow).sum(-1, keepdim=True)  # exact at 2f bits, as its components
    offset = quantize(torch.tensor(n * eps / lift**2, dtype=torch.float64), wide)
    return rsqrt_product_twin(
        sum_sq + offset,
        x,
        weight,
        NORM_LO_EXP,
        NORM_HI_EXP,
        scale=math.sqrt(n) / lift,
        frac_bits=frac_bits,
        then=then,
        keep=keep,
        shift=shift,
        rotate=rotate,
    )


def _centred_twin(x: torch.Tensor, frac_bits: int | None) -> torch.Tensor:
    x = quantize(x.to(torch.float64), frac_bits)
    n = x.shape[-1]
    mean_bits = _mean_bits(FRAC_BITS if frac_bits is None else frac_bits)
    mean = quantize(x.sum(-1, keepdim=True) * (round(2**mean_bits / n) / 2**mean_bits), frac_bits)
    return x - mean


def _centred(x: ArithShare) -> ArithShare:
    """x - mean(x) over the last dim: the mean multiplies by round(2^mean_bits / n) and
    truncates (2 rounds)."""
    n = x.shape[-1]
    mean_bits = _mean_bits(x.frac_bits)
    total = with_frac(x.sum(-1, keepdim=True), 0) * round(2**mean_bits / n)
    return x - truncate(with_frac(total, x.frac_bits + mean_bits), mean_bits)


def layernorm_twin(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    headroom_bits: int = 0,
    frac_bits: int | None = FRAC_BITS,
    then: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float twin of :func:`layernorm`."""
    y = _normalise_twin(_centred_twin(x, frac_bits), weight, eps, headroom_bits, frac_bits, then, shift=bias)
    return y + bias if bias is not None and then is None else y


def layernorm(
    x: ArithShare,
    weight: ArithShare | None,
    bias: ArithShare | None,
    eps: float = 1e-5,
    headroom_bits: int = 0,
    bracket: str = "compare",
    then: ArithShare | None = None,
) -> ArithShare:
    """LayerNorm of secret rows with secret gamma (``weight``) and beta (``bias``)
    [then times the next linear layer's weight ``then`` (n, m)].

    ``bracket`` is rsqrt's bit-length method: "compare" (fewest rounds) or "bits" (fewer
    bytes per row, 10 rounds more: the candidates then wait for it).

    ``weight=None`` (and ``bias=None``) skips the affine step, for a model owner who folds
    gamma and beta into the next linear layer before sharing it: one product per element
    (21.3 bytes) instead of two.

    ``then``: the matmul rides inside the norm
    (:func:`veil.protocols.approx.rsqrt_product.rsqrt_product_of_components`), so norm and
    matmul cost 11 rounds instead of 13; the last product is on the m outputs per row.  With
    gamma (a final norm feeding a tied LM head, whose table cannot take the gain),
    (x - mean) gamma @ then is truncated beside the candidates; with beta, beta @ then too.
    """
    with x.party.comm.scope("layernorm"):
        y = _normalise(_centred(x), weight, eps, headroom_bits, bracket, then, shift=bias)
        return y + bias if bias is not None and then is None else y


def layernorm_projected_twin(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    then: torch.Tensor,
    eps: float = 1e-5,
    headroom_bits: int = 0,
    frac_bits: int | None = FRAC_BITS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float twin of :func:`layernorm_projected`."""
    y, projected = _normalise_twin(
        _centred_twin(x, frac_bits), weight, eps, headroom_bits, frac_bits, then, True, bias
    )
    return (y if bias is None else y + bias), projected


def layernorm_projected(
    x: ArithShare,
    weight: ArithShare | None,
    bias: ArithShare | None,
    then: ArithShare,
    eps: float = 1e-5,
    headroom_bits: int = 0,
    bracket: str = "compare",
) -> tuple[ArithShare, ArithShare]:
    """A post-norm's output and its product by the next linear layer's weight, together:
    (y, y @ then) with y = LayerNorm(x) * gamma + beta.

    (x - mean) gamma @ then and beta @ then are truncated beside the candidates, and y and
    the product come from the one last product level
    (:func:`veil.protocols.approx.rsqrt_product.rsqrt_product_of_components` with ``keep``):
    11 rounds for both instead of 11 + 2; per row, 2m more products truncated from
    3-out-of-3 components (21.3 bytes each) than LayerNorm alone, and beta @ then's m
    elements once.
    """
    with x.party.comm.scope("layernorm"):
        d = _centred(x)
        y, projected = _normalise(d, weight, eps, headroom_bits, bracket, then, True, bias)
        return (y if bias is None else y + bias), projected


def rmsnorm_twin(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float = 1e-6,
    headroom_bits: int = 0,
    frac_bits: int | None = FRAC_BITS,
    then: torch.Tensor | None = None,
    rotate: RotaryColumns | None = None,
) -> torch.Tensor:
    """Float twin of :func:`rmsnorm`."""
    x = quantize(x.to(torch.float64), frac_bits)
    return _normalise_twin(x, weight, eps, headroom_bits, frac_bits, then, rotate=rotate)


def rmsnorm(
    x: ArithShare,
    weight: ArithShare | None,
    eps: float = 1e-6,
    headroom_bits: int = 0,
    bracket: str = "compare",
    then: ArithShare | None = None,
    rotate: RotaryColumns | None = None,
) -> ArithShare:
    """RMSNorm of secret rows with secret gamma (``weight``; None: gamma folded elsewhere)
    [then times the next linear layer's weight ``then`` (n, m): without gamma it rides
    inside the norm, 9 rounds for both instead of 11, as in :func:`layernorm`].

    ``rotate``: RoPE on the query and key columns of the projection
    (:mod:`veil.protocols.approx.rotary`), applied beside the bracket: no round of its own."""
    with x.party.comm.scope("rmsnorm"):
        return _normalise(x, weight, eps, headroom_bits, bracket, then, rotate=rotate)
