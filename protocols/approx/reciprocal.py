"""1/x for positive x: normalise by a secret power of two, then Goldschmidt.

Formula: write x = c * 2^e with c in [0.5, 1) (e from the secret's bit length).  With
w0 = 2.9142 - 2c (the linear initial guess of SPU's ``reciprocal_goldschmidt``, relative
error |e0| = |1 - c w0| <= 0.0858 on [0.5, 1)), two Goldschmidt iterations
    r1 = w0 (1 + e0),  e1 = e0^2,  r2 = r1 (1 + e1)
give 1/c with relative error e0^4 <= 5.4e-5, and 1/x = r2 * 2^-e.
Source: SecretFlow-SPU ``fxp_approx.cc`` / ``reciprocal_goldschmidt`` (PUMA's division);
eprint 2012/405 §6.1 for the iteration.

Bit length: the one-hot of the power-of-two bracket of v = x * 2^f over the window
(:mod:`veil.protocols.approx.bracket`: by default one batched comparison with every public
2^p, 5 rounds with the tree's last AND fused into B2A; or SPU's bit decomposition +
prefix-OR + B2A, 15 rounds and fewer bytes for windows of 4 positions or more);
both secret powers of two the protocol needs (2^(2f-1-p) to normalise, 2^(f-1-p+E) to
scale back) are dot products of it with public tables: free.  The scale 2^-e is applied
to w0 before the iterations, carried with E extra
fractional bits so that small results keep their relative precision; this saves one
multiplication level.

Valid range: x in [2^lo_exp, 2^hi_exp), hi_exp - lo_exp <= 59 - 2f (23 for f = 18; default
[2^-10, 2^10)).
Outside it the bracket saturates and the error grows quickly.
Error (measured): the iteration's relative error is <= 5.4e-5; the f-bit result adds
one ulp, 2^-f x relative.  Protocol vs 1/x: 3.7e-4 relative on [2^-10, 2^7] (bound 1e-3);
with ``extra_bits=4``, 1.6e-4 on the whole default window.  Protocol vs twin: 4.7e-4
relative (one or two ulp of the result).
First level fused (``bracket="compare"`` and 2 (f + hi_exp) <= 60, e.g. every softmax
row sum): with N = 2^-e from the bracket, e0 = 1 - c w0 = 1 - a x N - b x^2 N^2 and
w0 N = a N + b x N^2 are sums of products of x or x^2 with public tables of the one-hot,
so both take one truncation of 3-out-of-3 components right after the bracket, x^2 (an
exact 1-round square) riding beside the bracket's comparisons: 11 rounds instead of 13
(c, c w0 and w0 N took two levels), c never truncated; measured 5.6e-5 relative on
[1, 2^6) with extra_bits = 6 (twin 5.7e-5), 11 rounds, 459.4 bytes per element for W = 6,
1422.7 (was 1436.1) for the default window.
Cost (measured, default window W = 20, unfused), per element per party: 13 critical-path rounds,
1436.1 bytes with ``bracket="compare"`` (comparisons: 5 rounds, 68.9 (W - 1) bytes),
23 rounds, 493.3 bytes with ``bracket="bits"`` (15 rounds, 152 + 10.67 W bytes); plus 4
product levels (6 products truncated from their 3-out-of-3 components, 128 bytes) either
way.  Softmax uses it once per row (W = 8: 7 comparisons, 610.3 instead of 365.3 bytes),
where rounds matter more than bytes.  (Softmax now takes the row sum's reciprocal from its
3-out-of-3 components with every bracket's iteration beside the bracket,
:mod:`veil.protocols.approx.reciprocal_rows`.)
"""

from __future__ import annotations

from typing import TypeVar

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.lockstep import lockstep
from veil.protocols.approx._common import (
    FRAC_BITS,
    products,
    products_steps,
    quantize,
    truncate_components,
    with_frac,
)
from veil.protocols.approx.bracket import (
    bracket_dot,
    power_of_two_bracket,
    power_of_two_bracket_steps,
)
from veil.protocols.multiplication import local_product

T = TypeVar("T")
GOLDSCHMIDT_W0_OFFSET = 2.9142
GOLDSCHMIDT_W0_SLOPE = -2.0
DEFAULT_LO_EXP = -10
DEFAULT_HI_EXP = 10
RING_BITS_USED = 59
"""The scaled guess times (1 + e0) carries about 2f + (hi_exp - lo_exp) + 1 bits."""


def _exponents(x: torch.Tensor, lo_exp: int, hi_exp: int) -> torch.Tensor:
    """e with x = c * 2^e, c in [0.5, 1), clamped to the window like the protocol's bracket."""
    _, e = torch.frexp(x)
    return e.clamp(lo_exp + 1, hi_exp).to(torch.float64)


def reciprocal_twin(
    x: torch.Tensor,
    lo_exp: int = DEFAULT_LO_EXP,
    hi_exp: int = DEFAULT_HI_EXP,
    extra_bits: int = 0,
    frac_bits: int | None = FRAC_BITS,
) -> torch.Tensor:
    """Float twin of :func:`reciprocal`."""
    x = x.to(torch.float64)
    e = _exponents(x, lo_exp, hi_exp)
    scale = torch.pow(2.0, -e)
    fused = frac_bits is not None and _fits_fused(frac_bits, lo_exp, hi_exp)
    c = x * scale if fused else quantize(x * scale, frac_bits)  # fused: c is never truncated
    w0 = GOLDSCHMIDT_W0_OFFSET + GOLDSCHMIDT_W0_SLOPE * c
    e0 = 1 - quantize(c * w0, frac_bits)
    wide = None if frac_bits is None else frac_bits + hi_exp
    w0_scaled = quantize(w0 * scale, wide) if fused else w0 * scale
    r1 = quantize(w0_scaled * (1 + e0), wide)
    e1 = quantize(e0 * e0, frac_bits)
    return quantize(r1 * (1 + e1), None if frac_bits is None else frac_bits + extra_bits)


def _check_window(x: ArithShare, f: int, lo_exp: int, hi_exp: int) -> None:
    if x.frac_bits != f:
        raise ValueError("reciprocal expects a fixed-point share with f fractional bits")
    if not 0 < hi_exp - lo_exp <= RING_BITS_USED - 2 * f or hi_exp > f or lo_exp < -f:
        raise ValueError(f"reciprocal window [2^{lo_exp}, 2^{hi_exp}) is not supported")


def _iterations(w0_scaled: ArithShare, e0: ArithShare, f: int, wide: int, extra_bits: int) -> ArithShare:
    """The two Goldschmidt steps after the first level: r1 = w0 2^-e (1 + e0), e1 = e0^2,
    r = r1 (1 + e1) (4 rounds)."""
    r1, e1 = products([(w0_scaled, 1 + e0), (e0, e0)], out_frac=[f + wide, f])
    (r,) = products([(r1, 1 + e1)], out_frac=[f + extra_bits])
    return r


def reciprocal(
    x: ArithShare,
    lo_exp: int = DEFAULT_LO_EXP,
    hi_exp: int = DEFAULT_HI_EXP,
    extra_bits: int = 0,
    bracket: str = "compare",
) -> ArithShare:
    """1/x for secret x in [2^lo_exp, 2^hi_exp); the result has f + ``extra_bits`` bits.

    ``bracket`` picks how the bit length is found (:mod:`veil.protocols.approx.bracket`):
    "compare" (fewest rounds) or "bits" (fewest bytes for windows of 4 or more positions,
    for large tensors).
    """
    party = x.party
    f = party.fxp.frac_bits
    _check_window(x, f, lo_exp, hi_exp)
    wide = hi_exp  # extra fractional bits of the scaled guess (so 2^(f-1-p+wide) >= 1)
    positions = torch.arange(f + lo_exp, f + hi_exp)  # bit position p of v = x * 2^f
    with party.comm.scope("reciprocal"):
        if bracket == "compare" and _fits_fused(f, lo_exp, hi_exp):
            w0_scaled, e0 = _first_level_fused(x, positions, wide)
        else:
            onehot = power_of_two_bracket(x, positions, bracket)
            normalise = bracket_dot(onehot, torch.pow(2, 2 * f - 1 - positions))
            rescale = bracket_dot(onehot, torch.pow(2, f - 1 - positions + wide))
            # c = v * 2^(2f-1-p) / 2^(2f): in [0.5, 1) with f bits.
            (c,) = products([(x, with_frac(normalise, f))])
            w0 = c * int(GOLDSCHMIDT_W0_SLOPE) + GOLDSCHMIDT_W0_OFFSET
            cw0, w0_scaled = products([(c, w0), (w0, with_frac(rescale, wide))], out_frac=[f, f + wide])
            e0 = 1 - cw0
        r = _iterations(w0_scaled, e0, f, wide, extra_bits)
    return r


def _fits_fused(f: int, lo_exp: int, hi_exp: int) -> bool:
    """x^2 with 2f bits (< 2^(2 (f + hi))) and c^2 with 2f + 2 hi bits stay below 2^60."""
    return hi_exp > 0 and 2 * (f + hi_exp) <= 60 and f - 1 - lo_exp >= 0


def _first_level_fused(
    x: ArithShare, positions: torch.Tensor, wide: int
) -> tuple[ArithShare, ArithShare]:
    """(w0 2^-e with f + wide bits, e0 = 1 - c w0 with f bits) in one product level after the
    bracket, x^2 riding beside the bracket's comparisons (:mod:`veil.mpc.lockstep`).

    With N = 2^-e the bracket's secret power (c = x N) and w0 = a + b c (a = 2.9142,
    b = -2): e0 = 1 - a x N - b x^2 N^2 and w0 N = a N + b x N^2, where N, N^2 and a N
    are dot products of the bracket's one-hot with public tables (free) and x^2 is x's
    exact square (reshared, 2f bits).  Both sums are formed on 3-out-of-3 components and
    truncated in one call: 2 rounds, where c, then c w0 and w0 N took 4.  Bits: x^2 N^2 =
    c^2 carries 2f + F with F = 2 hi (so N^2 = 2^(2 (f - 1 - p) + F) is an integer)."""
    party = x.party
    f = party.fxp.frac_bits
    big = 2 * (positions[-1] - f + 1).item()  # F = 2 hi: N^2's fractional bits
    lanes = [
        lambda link: power_of_two_bracket_steps(link, x, positions),
        lambda link: products_steps(link, [(x, x)], out_frac=[2 * f]),
    ]
    onehot, (square,) = lockstep(party, *lanes)
    exponent = f - 1 - positions  # N = 2^exponent
    a, b = GOLDSCHMIDT_W0_OFFSET, int(GOLDSCHMIDT_W0_SLOPE)
    a_n = bracket_dot(onehot, torch.round(a * torch.pow(2.0, exponent + f + big)).to(torch.int64))  # a N, f + F bits
    n2 = bracket_dot(onehot, torch.pow(2, 2 * exponent + big))  # N^2 with F bits
    raw = 2 * f + big  # e0's components: x^2 N^2 and x (a N), both with 2f + F bits
    e0 = local_product(square.data, n2.data) * (-b) - local_product(x.data, a_n.data)
    if party.rank == 0:
        e0 += 1 << raw
    w0n = local_product(x.data, n2.data) * b + a_n.data[0]  # f + F bits
    e0_share, w0_scaled = truncate_components(party, [(e0, raw - f, f), (w0n, f + big - f - wide, f + wide)])
    return w0_scaled, e0_share
