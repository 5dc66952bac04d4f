"""y * scale / sqrt(x) [* gamma] [@ W] for norms: every bracket's guess computed beside the bracket.

Formula: write x = u_p * 2^(p + 2 - f) for the bracket p of v = x * 2^f (2^p <= v < 2^(p+1),
u_p in [0.25, 0.5)); then
    scale / sqrt(x) = g_p = q(u_p) * phi_p,   phi_p = scale * 2^(-(p + 2 - f) / 2),
with q SPU's quartic for rsqrt on [0.25, 0.5) (:mod:`veil.protocols.approx.rsqrt`, relative
error 8.2e-5), evaluated in w = u - 0.375.  For each window position p the candidate u_p is
x read with p + 2 more fractional bits: a relabelling, brought to a common precision by one
truncation (each candidate by its own shift).  So all W candidates g_p are computed from x
alone, beside the bracket's comparisons, and the bracket's one-hot b only selects:
    g = sum_p b_p g_p   (one plain multiplication: b is an integer 0/1, 1 round),
    result = (y [* gamma]) * g   [and ((y [* gamma]) @ W) * g].
Candidates of the wrong brackets may overflow the ring (u_p far from [0.25, 0.5)); they are
multiplied by b_p = 0, which is exactly 0 in the ring.  phi_p is folded into each candidate's
quartic coefficients (public per position), so no product by a factor table is needed.

Rounds (per row), with x as 3-out-of-3 components (a norm's sum of squares, before its own
truncation): x reshared with all its bits (1) and the bracket on it (5), beside [the
candidates u_p, y * gamma, y @ W] (2), [w_p^2, (y gamma) @ W or RoPE on y @ W] (2) and the
quartics (2) -> select (1) -> the last product (2) = 9 rounds, where forming S, then
:func:`veil.protocols.approx.rsqrt` ... took 2 + 13 (and 10 when x was truncated to f bits
for the bracket, 2 rounds where the reshare takes 1).  With x as a replicated share: 9 too.

Valid range: x in [2^lo_exp, 2^hi_exp) (values outside land in the end brackets, with the
quartic extrapolated); |result| < 2^RESULT_RANGE_BITS.
Error: the quartic's relative 8.2e-5; g carries f + E fractional bits and y * gamma f +
y_bits (:func:`precision_split`: 7 and 7 for a norm at f = 18), their roundings far below the
quartic's error; the result adds one ulp.  u_p comes from x's components at their full precision (2f bits for a sum of squares).
Cost per party: per row, W candidates through three truncations (u, w^2, quartic: 64 bytes
each, summed over the parties) and the bracket's comparisons, plus one select (24 bytes);
per element of y, y * gamma (with gamma) and the last product, 64 bytes each (summed over
the parties), against three products per element before.
"""

from __future__ import annotations

import math

import torch

from veil.mpc.arith import ArithShare, cat
from veil.mpc.lockstep import RoundLink, Steps, lockstep, run_alone
from veil.mpc.ring_matmul import ring_matmul
from veil.protocols.approx._common import (
    FRAC_BITS,
    products_steps,
    quantize,
    reshare_steps,
    truncate_components_steps,
    with_frac,
)
from veil.protocols.approx.bracket import (
    bracket_select_steps,
    power_of_two_bracket,
    power_of_two_bracket_steps,
)
from veil.protocols.approx.rotary import ROTARY_BITS, RotaryColumns
from veil.protocols.approx.rsqrt import (
    DEFAULT_HI_EXP,
    DEFAULT_LO_EXP,
    GUESS_CENTER,
    POWER_BITS,
    _window,
    centered_coefficients,
)
from veil.protocols.multiplication import local_product

RESULT_RANGE_BITS = 10
"""|result| < 2^10: the last product, (f + y_bits) + (f + E) bits, must stay below 2^61."""
GUESS_LIMIT = 2.2
"""The quartic's largest value near [0.25, 0.5) (rsqrt(0.25) = 2), for its raw bits."""
WIDE_BRACKET_BITS = 62
"""The bracket reads x with its components' ``frac`` bits when frac + hi_exp <= 62 (2^61,
its largest threshold, and every valid x stay inside the ring): at f = 18, a norm's 2f
and 2^26; at f = 20 it reads x truncated to f bits, 1 round later."""
QUARTIC_TOP_BITS = 61
"""Each candidate's quartic, before its truncation, stays below 2^61."""


def precision_split(f: int, lo_exp: int, hi_exp: int, scale: float) -> tuple[int, int]:
    """(y_bits, E): extra fractional bits of y * gamma (f + y_bits) and of the guess g (f + E).

    The last product, f + y_bits plus f + E bits with |result| < 2^10, must stay below 2^60,
    so y_bits + E = B = 60 - 10 - 2f.  y * gamma's rounding reaches the result times g (up to
    g_max = 2 scale 2^(-(lo_exp + 2) / 2)), g's rounding relative to g (down to g_min =
    sqrt(2) scale 2^(-(hi_exp + 1) / 2)); the two are equal for
    y_bits - E = log2(g_max) + log2(g_min).  For a norm (scale sqrt(768), window [2^-8, 2^26))
    at f = 18: 7 and 7, i.e. 2^-25 * 443 and 2^-25 / 2^-8.2 relative, far below the quartic's
    8.2e-5."""
    budget = max(0, 60 - RESULT_RANGE_BITS - 2 * f)
    g_max = math.log2(2 * scale) - (lo_exp + 2) / 2
    g_min = math.log2(math.sqrt(2) * scale) - (hi_exp + 1) / 2
    y_bits = min(budget, max(0, round((budget + g_max + g_min) / 2)))
    return y_bits, min(61 - f, budget - y_bits)


def _quartic_value(u: torch.Tensor, wide: int | None) -> torch.Tensor:
    """The centred quartic at u, w^2 rounded to ``wide`` bits as the protocol truncates it."""
    d = centered_coefficients()
    w = u - GUESS_CENTER
    w2 = quantize(w * w, wide)
    return d[0] + d[1] * w + d[2] * w2 + w2 * (d[3] * w + d[4] * w2)


def rsqrt_product_twin(
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
    lo_exp: int = DEFAULT_LO_EXP,
    hi_exp: int = DEFAULT_HI_EXP,
    scale: float = 1.0,
    frac_bits: int | None = FRAC_BITS,
    then: torch.Tensor | None = None,
    keep: bool = False,
    shift: torch.Tensor | None = None,
    rotate: RotaryColumns | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Float twin of :func:`rsqrt_product` (rounded where the protocol truncates); ``x`` at
    the precision the protocol's components have (the bracket reads it so)."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    f = FRAC_BITS if frac_bits is None else frac_bits
    _, e = torch.frexp(x)  # the bracket reads x at its components' precision
    e = e.clamp(lo_exp + 1, hi_exp).to(torch.float64)  # x = u * 2^(e+1)
    wide = None if frac_bits is None else max(f, POWER_BITS)
    u = quantize(x * torch.pow(2.0, -(e + 1)), wide)
    y_bits, guess_bits = precision_split(f, lo_exp, hi_exp, scale)
    guess_frac = None if frac_bits is None else f + guess_bits
    guess = quantize(_quartic_value(u, wide) * scale * torch.pow(2.0, -(e + 1) / 2), guess_frac)
    y_frac = None if frac_bits is None else f + y_bits
    scaled = y if weight is None else quantize(y * weight.to(torch.float64), y_frac)
    out = quantize(scaled * guess, frac_bits)
    if then is None:
        return out
    then = then.to(torch.float64)
    projected = quantize(scaled @ then, y_frac)
    if rotate is not None:
        projected = rotate.apply_twin(projected, y_frac)
    projected = quantize(projected * guess, frac_bits)
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
    bracket: str = "compare",
    then: ArithShare | None = None,
    keep: bool = False,
    shift: ArithShare | None = None,
) -> ArithShare | tuple[ArithShare, ArithShare]:
    """y * scale / sqrt(x) [* weight] [@ then] with f fractional bits, never forming 1/sqrt(x).

    x: (..., 1), secret, in [2^lo_exp, 2^hi_exp), f fractional bits; y: (..., n); weight:
    (n,) or None; |result| < 2^10.  ``bracket``: "compare" (5 rounds, beside the candidates:
    9 rounds in all) or "bits" (15 rounds, fewer bytes for wide windows, before them).

    ``then`` (n, m): the next linear layer's secret weight; (y [* weight]) @ then is
    truncated beside the candidates and the guess multiplies the m outputs.  Returns that
    product alone, or with ``keep`` the pair (result, result @ then) from one last product
    level.  ``shift`` (n,): a secret row added to the result before ``then`` (LayerNorm's
    beta); shift @ then is truncated beside the candidates and added to the projection, while
    the caller adds ``shift`` itself to the result.
    """
    f = x.party.fxp.frac_bits
    if x.frac_bits != f:
        raise ValueError("rsqrt_product expects x with f fractional bits")
    return rsqrt_product_of_components(
        x.data[0], f, y, weight, lo_exp, hi_exp, scale, bracket, then, keep, shift, x
    )


def rsqrt_product_of_components(
    components: torch.Tensor,
    frac: int,
    y: ArithShare,
    weight: ArithShare | None,
    lo_exp: int = DEFAULT_LO_EXP,
    hi_exp: int = DEFAULT_HI_EXP,
    scale: float = 1.0,
    bracket: str = "compare",
    then: ArithShare | None = None,
    keep: bool = False,
    shift: ArithShare | None = None,
    x: ArithShare | None = None,
    rotate: RotaryColumns | None = None,
) -> ArithShare | tuple[ArithShare, ArithShare]:
    """:func:`rsqrt_product` of x given as this party's 3-out-of-3 component (..., 1) with
    ``frac`` >= f fractional bits (a row's sum of squares straight from its local dot
    product): the bracket reads it reshared with its ``frac`` bits (9 rounds in all).
    ``x``: the same value as a replicated share with f bits, if the caller has it (9 rounds).
    ``rotate``: RoPE on the leading columns of ``y @ then`` (:mod:`veil.protocols.approx.rotary`),
    truncated beside the bracket (no gain: ``weight`` must be None)."""
    party = y.party
    f = party.fxp.frac_bits
    if y.frac_bits != f or frac < f:
        raise ValueError("rsqrt_product expects y with f and x with at least f fractional bits")
    positions, _, _ = _window(f, lo_exp, hi_exp)
    if rotate is not None and (then is None or weight is not None or keep):
        raise ValueError("rsqrt_product rotates y @ then only, without a gain and without keep")
    split = precision_split(f, lo_exp, hi_exp, scale)
    plan = _Plan(f, frac, positions, split, scale, y, weight, then, shift, rotate)
    with party.comm.scope("rsqrt"):
        if bracket == "compare":
            # x as it is, 2^(frac - f) times finer, reshared (1 round) rather than truncated to
            # f bits (2), where its window's powers of two fit the ring (frac + hi_exp <= 62).
            fine = x is None and frac + hi_exp <= WIDE_BRACKET_BITS
            box: dict[str, ArithShare] = {} if x is None else {"x": x}

            def candidates(link: RoundLink) -> Steps[tuple]:
                first = yield from plan.first_steps(link, components, need_x=x is None and not fine)
                if "x" in first:
                    box["x"] = first["x"]
                return first, (yield from plan.guess_steps(link, first))

            def bracket_lane(link: RoundLink) -> Steps[ArithShare]:
                if fine:
                    wide_x = yield from reshare_steps(link, components, frac)
                    return (yield from power_of_two_bracket_steps(link, wide_x, positions + (frac - f)))
                for _ in range(0 if x is not None else 2):
                    yield  # x to f bits comes out of the candidates' first truncation
                return (yield from power_of_two_bracket_steps(link, box["x"], positions))

            (first, guessed), onehot = lockstep(party, candidates, bracket_lane)
        else:
            first = run_alone(party, lambda link: plan.first_steps(link, components, need_x=x is None))
            onehot = power_of_two_bracket(first["x"] if x is None else x, positions, bracket)
            guessed = run_alone(party, lambda link: plan.guess_steps(link, first))
        return run_alone(party, lambda link: plan.finish_steps(link, onehot, first, guessed, keep))


class _Plan:
    """The public tables and fractional bits of one :func:`rsqrt_product_of_components` call."""

    def __init__(self, f, frac, positions, split, scale, y, weight, then, shift, rotate=None):
        self.f, self.frac = f, frac
        self.y, self.weight, self.then, self.shift = y, weight, then, shift
        self.rotate: RotaryColumns | None = rotate
        self.wide = max(f, POWER_BITS)
        self.y_frac = f + split[0]
        self.guess_frac = f + split[1]
        # u_p = x * 2^(f - p - 2) onto `wide` bits: components shifted by frac - f + p + 2 - wide.
        self.u_shift = frac - f + positions.to(torch.int64) + 2 - self.wide
        phi = scale * torch.pow(2.0, -(positions.to(torch.float64) + 2 - f) / 2)
        raw = torch.floor(QUARTIC_TOP_BITS - torch.log2(GUESS_LIMIT * phi))
        raw = raw.clamp(self.guess_frac, self.guess_frac + 61)
        d = centered_coefficients()
        self.quartic_shift = raw.to(torch.int64) - self.guess_frac

        def table(k: int, power_bits: int) -> torch.Tensor:
            return torch.round(d[k] * phi * torch.pow(2.0, raw - power_bits)).to(torch.int64)

        self.constant = table(0, 0)
        self.low = [table(1, self.wide), table(2, self.wide)]
        self.high = [table(3, 2 * self.wide), table(4, 2 * self.wide)]

    def first_steps(self, link: RoundLink, components: torch.Tensor, need_x: bool) -> Steps[dict]:
        """Round 1-2: one truncation of the candidates u_p, x to f bits (``need_x``),
        y * gamma, and the projections that need no gamma."""
        f, y = self.f, self.y
        lift = (-self.u_shift).clamp(min=0)
        parts = [(components * (torch.ones((), dtype=torch.int64) << lift), self.u_shift.clamp(min=0), self.wide)]
        names = ["u"]
        if need_x:
            parts.append((components, self.frac - f, f))
            names.append("x")
        if self.weight is not None:
            parts.append((local_product(y.data, self.weight.data), 2 * f - self.y_frac, self.y_frac))
            names.append("scaled")
        elif self.then is not None:
            parts.append((local_product(y.data, self.then.data, ring_matmul), 2 * f - self.y_frac, self.y_frac))
            names.append("projected")
        if self.then is not None and self.shift is not None:
            parts.append((local_product(self.shift.data, self.then.data, ring_matmul), f, f))
            names.append("shifted")
        pieces = yield from truncate_components_steps(link, parts)
        first = dict(zip(names, pieces))
        first.setdefault("scaled", y)
        return first

    def guess_steps(self, link: RoundLink, first: dict) -> Steps[tuple[ArithShare, dict]]:
        """w_p^2 [and (y gamma) @ then] in one truncation, then every candidate's quartic
        times phi_p in another (4 rounds)."""
        wide = self.wide
        w = first["u"] - GUESS_CENTER
        parts = [(local_product(w.data, w.data), wide, wide)]
        if self.weight is not None and self.then is not None:
            parts.append((local_product(first["scaled"].data, self.then.data, ring_matmul), self.f, self.y_frac))
        if self.rotate is not None:
            parts.append((self.rotate.component(first["projected"].data[0]), ROTARY_BITS, self.y_frac))
        w2, *later = yield from truncate_components_steps(link, parts)
        if self.rotate is not None:
            later = [cat([later[0], first["projected"][..., self.rotate.width :]], dim=-1)]
        factor = with_frac(w, 0) * self.high[0] + with_frac(w2, 0) * self.high[1]
        quartic = local_product(w2.data, factor.data) + w.data[0] * self.low[0] + w2.data[0] * self.low[1]
        if link.party.rank == 0:
            quartic += self.constant
        (guesses,) = yield from truncate_components_steps(link, [(quartic, self.quartic_shift, self.guess_frac)])
        return guesses, dict(zip(["projected"], later))

    def finish_steps(self, link, onehot: ArithShare, first: dict, guessed, keep: bool) -> Steps:
        """g = sum_p b_p g_p (:func:`veil.protocols.approx.bracket.bracket_select_steps`, 1 round), then the last product level (2)."""
        guesses, later = guessed
        guess = yield from bracket_select_steps(link, onehot, guesses)
        f = self.f
        if self.then is None:
            (out,) = yield from products_steps(link, [(first["scaled"], guess)], [f])
            return out
        projected = later.get("projected", first.get("projected"))
        if keep:
            out, projected = yield from products_steps(link, [(first["scaled"], guess), (projected, guess)], [f, f])
        else:
            (projected,) = yield from products_steps(link, [(projected, guess)], [f])
        if "shifted" in first:
            projected = projected + first["shifted"]
        return (out, projected) if keep else projected
