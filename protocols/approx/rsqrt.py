"""1/sqrt(x) for positive x: power-of-two bracket, SPU's quartic initial guess, parity fix.

Formula: write x = u * 2^(e+1) with u in [0.25, 0.5) (e from the secret's bit length).
SPU's quartic (``rsqrt_init_guess``, from dl.acm.org/doi/10.1145/3411501.3419427)
    rsqrt(u) ~ 26.02942339 u^4 - 49.86605845 u^3 + 38.4714796 u^2 - 15.47994394 u + 4.14285016
has relative error 8.2e-5 on [0.25, 0.5), so no Newton step is needed.  Then
    rsqrt(x) = rsqrt(u) * 2^(-(e+1)/2),
where the factor, including the sqrt(2) of odd exponents (SPU's parity correction), and an
optional public ``scale`` are one public table entry per bracket: the bracket's one-hot
(:mod:`veil.protocols.approx.bracket`) dotted
with the table gives the secret factor for free.  The factor carries E extra fractional bits
(as many as the ring allows) so that small results keep their relative precision.

Valid range: x in [2^lo_exp, 2^hi_exp) (default [2^-14, 2^14)), hi_exp - lo_exp <= 40.
Error (measured): the quartic's relative error is 8.2e-5; u and its powers carry 26
bits (f + 8 at f = 18) so the large alternating coefficients add little; the result adds one ulp
(2^-(f + extra_bits) / rsqrt(x) relative).  Protocol vs 1/sqrt(x): 4.0e-4 relative over
the default window (bound 1e-3), 9.7e-5 with ``extra_bits=4``; protocol vs twin 4.7e-4
(one or two ulp of the result).
The quartic is evaluated in w = u - 0.375 (:func:`centered_coefficients`, the same
polynomial) as d_0 + d_1 w + d_2 w^2 + w^2 (d_3 w + d_4 w^2): after w^2, one local product
and one truncation of 3-out-of-3 components (:func:`_guess_share`); w^3 and w^4 are never
formed, which saves a product level (2 rounds) against u^2 | u^3, u^4 | linear combination.
Cost, per element per party: 13 critical-path rounds with ``bracket="compare"``
(comparisons: 5 rounds, 68.9 (W - 1) bytes), 20 with ``bracket="bits"`` (15 rounds,
152 + 10.67 W bytes); plus 3 product levels (u, w^2, the quartic) and the final product,
each truncated from 3-out-of-3 components (21.3 bytes each).
LayerNorm and RMSNorm use it once per row, where rounds matter more than bytes.
"""

from __future__ import annotations

import math

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.ring_matmul import ring_matmul
from veil.protocols.approx._common import (
    FRAC_BITS,
    products,
    quantize,
    truncate_components,
    with_frac,
)
from veil.protocols.approx.bracket import bracket_dot, power_of_two_bracket
from veil.protocols.multiplication import local_product

# rsqrt(u) on [0.25, 0.5): coefficients of u^1..u^4 and the constant (SPU).
RSQRT_COEFFS = (-15.47994394, 38.4714796, -49.86605845, 26.02942339)
RSQRT_CONSTANT = 4.14285016
DEFAULT_LO_EXP = -14
DEFAULT_HI_EXP = 14
MAX_WINDOW = 40
RING_HEADROOM_BITS = 60  # products stay below 2^60, under truncation's 2^62 limit
POWER_BITS = 26
"""u and its powers carry 26 fractional bits (f + 8 for f = 18; u^2 < 2^(2 * 26 - 2) stays
in range): the quartic's coefficients (up to 50, alternating) would otherwise turn one-ulp
truncation errors into 2.5e-4 relative error."""


GUESS_CENTER = 0.375
"""The quartic is evaluated in w = u - 0.375 (|w| <= 1/8): the same polynomial, but its w^3 and
w^4 terms are small enough (<= 0.021, 0.0064) to take coefficients with few bits."""
GUESS_RAW_BITS = 60
"""Fractional bits of the quartic's 3-out-of-3 components before its one truncation."""


def centered_coefficients() -> list[float]:
    """d_0..d_4 with sum_k d_k w^k = SPU's quartic at u = w + 0.375 (binomial re-expansion)."""
    coeffs = [RSQRT_CONSTANT, *RSQRT_COEFFS]
    return [
        sum(coeffs[j] * math.comb(j, k) * GUESS_CENTER ** (j - k) for j in range(k, 5)) for k in range(5)
    ]


def _guess_encoding(wide: int) -> tuple[int, list[int], list[int], int]:
    """(raw bits R, weights of w and w^2 (onto R bits), of w and w^2 inside the high factor
    B = d_3 w + d_4 w^2 (onto R - wide bits, so that w^2 B lands on R), constant d_0 on R)."""
    d = centered_coefficients()
    raw = GUESS_RAW_BITS
    low = [round(c * 2.0 ** (raw - wide)) for c in d[1:3]]
    high = [round(c * 2.0 ** (raw - 2 * wide)) for c in d[3:5]]
    return raw, low, high, round(d[0] * 2.0**raw)


def _guess(u: torch.Tensor, frac_bits: int | None) -> torch.Tensor:
    """Twin of :func:`_guess_share`: the quartic at u, rounded where the protocol truncates."""
    w = u - GUESS_CENTER
    if frac_bits is None:
        d = centered_coefficients()
        return sum(c * w**k for k, c in enumerate(d))
    wide = max(frac_bits, POWER_BITS)
    w2 = quantize(w * w, wide)
    raw, low, high, constant = _guess_encoding(wide)
    a = constant / 2.0**raw + (low[0] * w + low[1] * w2) / 2.0 ** (raw - wide)
    b = (high[0] * w + high[1] * w2) / 2.0 ** (raw - 2 * wide)
    return quantize(a + w2 * b, frac_bits)


def _guess_part(w: ArithShare, w2: ArithShare) -> tuple[torch.Tensor, int, int]:
    """The quartic d_0 + d_1 w + d_2 w^2 + w^2 (d_3 w + d_4 w^2) as this party's 3-out-of-3
    component, with the shift and fractional bits of its one truncation: w^3 and w^4 are
    never formed, the local product w^2 B and the low terms are summed on components (w,
    w^2 with ``wide`` bits)."""
    party = w.party
    f = party.fxp.frac_bits
    raw, low, high, constant = _guess_encoding(w.frac_bits)
    factor = with_frac(w, 0) * high[0] + with_frac(w2, 0) * high[1]
    components = local_product(w2.data, factor.data) + w.data[0] * low[0] + w2.data[0] * low[1]
    if party.rank == 0:
        components += constant
    return components, raw - f, f


def _guess_share(w: ArithShare, w2: ArithShare) -> ArithShare:
    """The quartic with f bits in one truncation (2 rounds)."""
    (guess,) = truncate_components(w.party, [_guess_part(w, w2)])
    return guess


def _projection_part(scaled: ArithShare, then: ArithShare, frac: int) -> tuple[torch.Tensor, int, int]:
    """(scaled @ then) as 3-out-of-3 components, truncated to ``frac`` bits with others."""
    return local_product(scaled.data, then.data, ring_matmul), then.frac_bits, frac


def rsqrt_twin(
    x: torch.Tensor,
    lo_exp: int = DEFAULT_LO_EXP,
    hi_exp: int = DEFAULT_HI_EXP,
    scale: float = 1.0,
    frac_bits: int | None = FRAC_BITS,
    extra_bits: int = 0,
) -> torch.Tensor:
    """Float twin of :func:`rsqrt` (times ``scale``)."""
    x = x.to(torch.float64)
    _, e = torch.frexp(x)
    e = e.clamp(lo_exp + 1, hi_exp).to(torch.float64)  # x = u * 2^(e+1)
    wide = None if frac_bits is None else max(frac_bits, POWER_BITS)
    u = quantize(x * torch.pow(2.0, -(e + 1)), wide)
    out_bits = None if frac_bits is None else frac_bits + extra_bits
    return quantize(_guess(u, frac_bits) * scale * torch.pow(2.0, -(e + 1) / 2), out_bits)


def _factor_bits(f: int, lo_exp: int, scale: float) -> int:
    """Extra fractional bits E of the factor table: as many as keep guess * factor < 2^60."""
    largest_factor_log2 = f - (lo_exp + 1) / 2 + math.log2(scale)
    guess_log2 = f + 1.1  # rsqrt(u) <= 2.0 on [0.25, 0.5)
    return max(0, min(61 - f, math.floor(RING_HEADROOM_BITS - largest_factor_log2 - guess_log2)))


def _window(f: int, lo_exp: int, hi_exp: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """The bracket's bit positions p of v = x * 2^f, the normaliser's extra bits, and the
    exponent of x = u * 2^exponent at each position (u in [0.25, 0.5))."""
    if not 0 < hi_exp - lo_exp <= MAX_WINDOW or lo_exp < -f:
        raise ValueError(f"rsqrt window [2^{lo_exp}, 2^{hi_exp}) is not supported")
    positions = torch.arange(f + lo_exp, f + hi_exp)
    # u = v / 2^(p+2); the normaliser 2^(2f-2-p) gets `lift` extra bits where p > 2f - 2.
    lift = max(0, f + hi_exp - 1 - (2 * f - 2))
    return positions, lift, positions.to(torch.float64) + 2 - f


def rsqrt(
    x: ArithShare,
    lo_exp: int = DEFAULT_LO_EXP,
    hi_exp: int = DEFAULT_HI_EXP,
    scale: float = 1.0,
    extra_bits: int = 0,
    bracket: str = "compare",
) -> ArithShare:
    """scale / sqrt(x) for secret x in [2^lo_exp, 2^hi_exp), public ``scale`` > 0.

    ``bracket`` picks how the bit length is found (:mod:`veil.protocols.approx.bracket`):
    "compare" (fewest rounds) or "bits" (fewest bytes for windows of 4 or more positions,
    for large tensors).

    The result has f + ``extra_bits`` fractional bits (more relative precision for small
    results, e.g. LayerNorm of rows with a large variance).
    """
    party = x.party
    f = party.fxp.frac_bits
    if x.frac_bits != f:
        raise ValueError("rsqrt expects a fixed-point share with f fractional bits")
    positions, lift, exponents = _window(f, lo_exp, hi_exp)
    extra = _factor_bits(f, lo_exp, scale)
    factors = torch.round(scale * torch.pow(2.0, f + extra - exponents / 2)).to(torch.int64)
    with party.comm.scope("rsqrt"):
        onehot = power_of_two_bracket(x, positions, bracket)
        normalise = bracket_dot(onehot, torch.pow(2, 2 * f - 2 - positions + lift))
        factor = bracket_dot(onehot, factors)
        wide = max(f, POWER_BITS)
        (u,) = products([(x, with_frac(normalise, f + lift))], out_frac=[wide])
        w = u - GUESS_CENTER
        (w2,) = products([(w, w)], out_frac=[wide])
        guess = _guess_share(w, w2)
        (r,) = products([(guess, with_frac(factor, f + extra))], out_frac=[f + extra_bits])
    return r


def _scaled_factor_bits(f: int, ratio_bound: float) -> int:
    """Extra fractional bits of the power-of-two factor in :func:`rsqrt_product`: as many as
    keep y * factor (at most 0.71 x ``ratio_bound``, as u < 0.5) below 2^60 with 2f + E bits."""
    return max(0, min(61 - f, math.floor(RING_HEADROOM_BITS - 2 * f - math.log2(0.71 * ratio_bound))))


def rsqrt_product_twin(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
    lo_exp: int = DEFAULT_LO_EXP,
    hi_exp: int = DEFAULT_HI_EXP,
    scale: float = 1.0,
    ratio_bound: float = 1.0,
    y_bits: int = 0,
    frac_bits: int | None = FRAC_BITS,
    then: torch.Tensor | None = None,
    keep: bool = False,
    shift: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Float twin of :func:`rsqrt_product` (rounded where the protocol truncates)."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    _, e = torch.frexp(x)
    e = e.clamp(lo_exp + 1, hi_exp).to(torch.float64)  # x = u * 2^(e+1)
    wide = None if frac_bits is None else max(frac_bits, POWER_BITS)
    u = quantize(x * torch.pow(2.0, -(e + 1)), wide)
    f = FRAC_BITS if frac_bits is None else frac_bits
    factor_bits = None if frac_bits is None else f + _scaled_factor_bits(f, ratio_bound)
    factor = quantize(scale * torch.pow(2.0, -(e + 1) / 2), factor_bits)
    y_frac = None if frac_bits is None else frac_bits + y_bits
    scaled = quantize(y * factor, y_frac)
    if weight is not None:
        scaled = quantize(scaled * weight.to(torch.float64), y_frac)
    guess = _guess(u, frac_bits)
    out = quantize(scaled * guess, frac_bits)
    if then is None:
        return out
    then = then.to(torch.float64)
    projected = quantize(quantize(scaled @ then, y_frac) * guess, frac_bits)
    if shift is not None:
        projected = projected + quantize(shift.to(torch.float64) @ then, frac_bits)
    return (out, projected) if keep else projected


def rsqrt_product(
    x: ArithShare,
    y: ArithShare,
    weight: ArithShare | None,
    lo_exp: int = DEFAULT_LO_EXP,
    hi_exp: int = DEFAULT_HI_EXP,
    scale: float = 1.0,
    ratio_bound: float = 1.0,
    y_bits: int = 0,
    bracket: str = "compare",
    then: ArithShare | None = None,
    keep: bool = False,
    shift: ArithShare | None = None,
) -> ArithShare | tuple[ArithShare, ArithShare]:
    """y * scale / sqrt(x) [* weight] [@ then] with f fractional bits, never forming 1/sqrt(x).

    x: (..., 1), secret, in [2^lo_exp, 2^hi_exp); y: (..., n) with
    |y| * scale / sqrt(x) <= ``ratio_bound`` (a norm: |x_i - mean| <= sqrt(S), so
    sqrt(n)); weight: (n,) or None; |result| < 2^10.

    Why: :func:`rsqrt` ends with guess * factor (the quartic in u times the power-of-two
    part 2^(-(e+1)/2)), and a norm then multiplies by y and by gamma: three product
    levels after the guess.  Here the factor and gamma go into y while the quartic's
    powers are computed, in the same rounds (y * factor beside u = x * 2^-(e+1), then
    * gamma beside u^2), and one product by the guess follows it:
        bracket (5) -> [u, y f] (2) -> [w^2, y f gamma] (2) -> guess (2)
        -> y f gamma * guess (2)                                  = 13 rounds,
    against rsqrt's 13 plus 1 (x r, untruncated) plus 2 (* gamma) for the same result.
    y f and y f gamma carry f + ``y_bits`` fractional bits (|y f| <= 0.71 ``ratio_bound``,
    u < 0.5); the factor table gets as many extra bits as keep y * factor below 2^60.
    Error: the quartic's relative 8.2e-5, plus one ulp (2^-(f + y_bits)) of y f and of
    y f gamma, each times |gamma| * guess, plus one ulp of the result.
    Cost per element of y per party: three products truncated from their 3-out-of-3
    components, 64 bytes (two without weight, 42.7); per row rsqrt's bracket and its
    two products and the quartic's one truncation.

    ``then`` (n, m): the product by the next linear layer's secret weight.  (y f [gamma])
    @ then is truncated together with the level after y f [gamma] (w^2 without ``weight``,
    the quartic with it), and the guess multiplies the m outputs: the norm and the matmul
    cost the norm's 13 rounds instead of 13 + 2, since y f / sqrt(x) is never formed.
    (y f) @ then keeps f + ``y_bits`` fractional bits; the last product is on m elements
    per row (21.3 bytes each).  Returns the product alone, or with ``keep`` the pair
    (result, result @ then), both from the last product level (a post-norm's output feeds
    the residual and the next layer).  ``shift`` (n,): a secret row added to the result
    before ``then`` (LayerNorm's beta); shift @ then is truncated with the projection and
    added to it (m more elements in that truncation, once, not per row), while the caller
    adds ``shift`` itself to the result.
    """
    party = x.party
    f = party.fxp.frac_bits
    if x.frac_bits != f or y.frac_bits != f:
        raise ValueError("rsqrt_product expects fixed-point shares with f fractional bits")
    positions, lift, exponents = _window(f, lo_exp, hi_exp)
    extra = _scaled_factor_bits(f, ratio_bound)
    factors = torch.round(scale * torch.pow(2.0, f + extra - exponents / 2)).to(torch.int64)
    y_frac = f + y_bits
    with party.comm.scope("rsqrt"):
        onehot = power_of_two_bracket(x, positions, bracket)
        normalise = bracket_dot(onehot, torch.pow(2, 2 * f - 2 - positions + lift))
        factor = bracket_dot(onehot, factors)
        wide = max(f, POWER_BITS)
        u, scaled = products(
            [(x, with_frac(normalise, f + lift)), (y, with_frac(factor, f + extra))], out_frac=[wide, y_frac]
        )
        w = u - GUESS_CENTER
        if weight is not None:
            w2, scaled = products([(w, w), (scaled, weight)], out_frac=[wide, y_frac])
        beside = [] if then is None else [_projection_part(scaled, then, y_frac)]
        if shift is not None and then is not None:
            beside.append(_projection_part(shift, then, f))
        if weight is not None:
            guess, *projections = truncate_components(party, [_guess_part(w, w2), *beside])
        else:
            if beside:
                w2, *projections = truncate_components(
                    party, [(local_product(w.data, w.data), wide, wide), *beside]
                )
            else:
                (w2,) = products([(w, w)], out_frac=[wide])
            guess = _guess_share(w, w2)
        if then is None:
            (out,) = products([(scaled, guess)], out_frac=[f])
            return out
        projected, *shifted = projections
        if keep:
            out, projected = products([(scaled, guess), (projected, guess)], out_frac=[f, f])
        else:
            (projected,) = products([(projected, guess)], out_frac=[f])
        if shifted:
            projected = projected + shifted[0]
    return (out, projected) if keep else projected
