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
LayerNorm and RMSNorm take the same quartic per bracket in
:mod:`veil.protocols.approx.rsqrt_product` (every bracket's guess beside the bracket).
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
