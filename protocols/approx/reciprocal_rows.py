"""1/s for a row sum still held as 3-out-of-3 components: every bracket's Goldschmidt beside the bracket.

Formula: for the bracket p of v = s * 2^f (2^p <= v < 2^(p+1)), c_p = s * 2^(f - p - 1) is in
[0.5, 1) and 1/s = 2^(f - p - 1) / c_p, with SPU's Goldschmidt for 1/c
(:mod:`veil.protocols.approx.reciprocal`): w0 = 2.9142 - 2c, e0 = 1 - c w0,
r1 = w0 (1 + e0), e1 = e0^2, r2 = r1 (1 + e1), relative error e0^4 <= 5.4e-5.
For each window position p, c_p is s read with more fractional bits (a relabelling, brought
to a common precision by one truncation with a shift per position), so all W candidates run
their three product levels beside the bracket's comparisons; the bracket's integer one-hot b
then selects: 1/s = sum_p b_p r2_p 2^(f - p - 1) (one plain multiplication, 1 round; the
power of two rides in the last truncation's per-position shift).  Candidates of the wrong
brackets may be garbage (c_p far outside [0.5, 1)); b_p = 0 zeroes them exactly.
Source: the bracket-then-iterate reciprocal of SPU/PUMA, reordered so that the iterations no
longer wait for the bracket.

Rounds, from s's components: [s to f bits, the candidates c_p, the caller's parts] (2) ->
the bracket (5) beside e0 (2), [r1, e1] (2), r2 (2) -> select (1) = 9, then the caller's
product by 1/s (2).  Before (:func:`veil.protocols.approx.reciprocal.reciprocal_beside` on the
truncated sum): 2 + 11 + 2.

Valid range: s in [2^lo_exp, 2^hi_exp) with 0 <= lo_exp < hi_exp (a softmax row sum lies in
[1, n]).  Error: the iteration's 5.4e-5 relative; c and the iterates carry WIDE_BITS (26)
fractional bits, the result f + ``extra_bits``.  Cost per row per party: W candidates through
five truncations (c, e0, r1, e1, r2: 21.3 bytes each), the bracket's W - 1 comparisons, s's
truncation and the select (8 bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.lockstep import RoundLink, Steps, lockstep, run_alone
from veil.mpc.party import Party
from veil.protocols.approx._common import (
    FRAC_BITS,
    products_steps,
    quantize,
    truncate_components_steps,
    with_frac,
)
from veil.protocols.approx.bracket import bracket_select_steps, power_of_two_bracket_steps
from veil.protocols.approx.reciprocal import GOLDSCHMIDT_W0_OFFSET, GOLDSCHMIDT_W0_SLOPE
from veil.protocols.multiplication import local_product

WIDE_BITS = 26
"""Fractional bits of c and of the iterates (c^2 with 52 bits stays below 2^60)."""


def _wide(f: int) -> int:
    return max(f, WIDE_BITS)


def reciprocal_of_sum_twin(
    s: torch.Tensor, lo_exp: int, hi_exp: int, extra_bits: int, frac_bits: int | None = FRAC_BITS
) -> torch.Tensor:
    """Float twin of :func:`reciprocal_of_sum`; ``s`` at its components' precision (the
    bracket reads it at f bits)."""
    s = s.to(torch.float64)
    f = FRAC_BITS if frac_bits is None else frac_bits
    wide = None if frac_bits is None else _wide(f)
    _, e = torch.frexp(quantize(s, frac_bits))
    e = e.clamp(lo_exp + 1, hi_exp).to(torch.float64)  # s = c 2^e, c in [0.5, 1)
    c = quantize(s * torch.pow(2.0, -e), wide)
    a, b = GOLDSCHMIDT_W0_OFFSET, GOLDSCHMIDT_W0_SLOPE
    a_wide = a if wide is None else round(a * 2**wide) / 2**wide
    e0 = quantize(1 - a_wide * c - b * c * c, wide)
    w0 = a_wide + b * c
    r1 = quantize(w0 * (1 + e0), wide)
    e1 = quantize(e0 * e0, wide)
    out = None if frac_bits is None else f + extra_bits
    return quantize(r1 * (1 + e1) * torch.pow(2.0, -e), out)


def reciprocal_of_sum(
    party: Party,
    components: torch.Tensor,
    frac: int,
    lo_exp: int,
    hi_exp: int,
    extra_bits: int,
    parts: Sequence[tuple[torch.Tensor, int, int]] = (),
    beside: Callable[[RoundLink, list[ArithShare]], Steps[Any]] | None = None,
) -> tuple[ArithShare, list[ArithShare], Any]:
    """(1/s with f + ``extra_bits`` bits, the truncated ``parts``, what ``beside`` returned).

    ``components``: this party's 3-out-of-3 component (..., 1) of s with ``frac`` >= f
    fractional bits.  ``parts``: more
    3-out-of-3 parts truncated in the first call (:func:`truncate_components`' format, e.g.
    softmax's exp values); ``beside``: steps on those truncated parts run beside the bracket
    (softmax's e @ V), at most 7 rounds to stay off the critical path.
    """
    f = party.fxp.frac_bits
    if not 0 <= lo_exp < hi_exp or frac < f:
        raise ValueError(f"reciprocal_of_sum: window [2^{lo_exp}, 2^{hi_exp}) or {frac} bits not supported")
    positions = torch.arange(f + lo_exp, f + hi_exp)
    wide = _wide(f)
    c_shift = frac + positions + 1 - f - wide  # c_p = s 2^(f-p-1) onto `wide` bits
    lift = (-c_shift).clamp(min=0)
    first_parts = [
        (components, frac - f, f),
        (components * (torch.ones((), dtype=torch.int64) << lift), c_shift.clamp(min=0), wide),
        *parts,
    ]
    box: dict[str, list[ArithShare]] = {}

    def candidates(link: RoundLink) -> Steps[ArithShare]:
        box["first"] = yield from truncate_components_steps(link, first_parts)
        return (yield from _goldschmidt_steps(link, box["first"][1], positions, f, extra_bits))

    def bracket(link: RoundLink) -> Steps[ArithShare]:
        yield
        yield  # s to f bits comes out of the candidates' first truncation
        return (yield from power_of_two_bracket_steps(link, box["first"][0], positions))

    def other(link: RoundLink) -> Steps[Any]:
        yield
        yield
        return (yield from beside(link, box["first"][2:]))

    lanes = [candidates, bracket] + ([other] if beside is not None else [])
    with party.comm.scope("reciprocal"):
        guesses, onehot, *rest = lockstep(party, *lanes)
        r = run_alone(party, lambda link: bracket_select_steps(link, onehot, guesses))
    return r, box["first"][2:], rest[0] if rest else None


def _goldschmidt_steps(
    link: RoundLink, c: ArithShare, positions: torch.Tensor, f: int, extra_bits: int
) -> Steps[ArithShare]:
    """Every candidate's 1/c_p 2^(f-p-1) with f + extra_bits bits: e0, [r1, e1], r2 (6 rounds)."""
    party = link.party
    wide = c.frac_bits
    a, b = round(GOLDSCHMIDT_W0_OFFSET * 2**wide), int(GOLDSCHMIDT_W0_SLOPE)
    e0 = local_product(c.data, c.data) * (-b) - c.data[0] * a  # 1 - a c - b c^2, 2 wide bits
    if party.rank == 0:
        e0 += 1 << (2 * wide)
    (e0,) = yield from truncate_components_steps(link, [(e0, wide, wide)])
    w0 = with_frac(with_frac(c, 0) * b + a, wide)  # a + b c, ring-exact (a has `wide` bits)
    r1, e1 = yield from products_steps(link, [(w0, 1 + e0), (e0, e0)], out_frac=[wide, wide])
    out = f + extra_bits
    # r2 = r1 (1 + e1) with 2 wide bits, times 2^(f-p-1), onto f + extra bits.
    shift = 2 * wide - (f - positions - 1) - out
    (r,) = yield from truncate_components_steps(link, [(local_product(r1.data, (1 + e1).data), shift, out)])
    return r
