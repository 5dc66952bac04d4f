"""Softmax over the last dimension with an optional public mask.

Formula (PUMA, arXiv 2307.12533 §4.2): z = x - max(x) (comparisons), e = exp(z)
(:mod:`veil.protocols.approx.exp`: degree-8 base on [-14/4, 0] and t = 2 squarings, clipped
below -14), s = sum(e), one reciprocal per row (:mod:`veil.protocols.approx.reciprocal_rows`, on
[1, 2^ceil(log2(n+1))), result with 6 extra fractional bits), softmax = e * (1/s).  The clip
zeroes exp's base (the squarings keep the zeros) and the last squaring is left as local
components, truncated per element and per row sum in one call with the reciprocal's
candidates, so s needs no truncation of its own (:func:`exp_components`).
Mask: a public bool tensor broadcastable to x, True = keep.  Masked logits are pushed down
by 2^20 before the max (so they never win) and exp's components are multiplied by the
public 0/1 mask, so masked probabilities are exactly 0.  Every row needs at least one kept
entry.

Valid range: |x| < 2^20 for the logits (comparisons and the mask offset stay in range).
Error vs torch.softmax (measured, f = 18, rows of 128 logits ~ N(0, 3^2), plain and
causal-masked, 12x128x128): 3.0e-5 max abs (the quadratic t = 6 exp before: 9.1e-4; bound
1e-2; PUMA's t = 5 linear exp: 6.4e-2); protocol vs twin 2-3 ulp.  See
:mod:`veil.protocols.approx.exp` for the exp trade-off table.
Cost per party, 12x128x128 (logits ~ N(0, 3^2); ``python -m benchmarks.nonlinear --only
softmax``, Dec 7): 39 critical-path rounds, 69.83 MB (busiest party): the max takes the
planned tournament levels of 8 and 16 (:func:`veil.protocols.reductions.plan_for`: 9 + 10
rounds, about 200 bytes per element; the binary tree took 42 rounds and 47.6 bytes; short
rows such as GPT-2's 12x32x32 take one all-pairs level, 11 rounds), exp's base 6 rounds with
the clip's comparison beside it, the clip's multiplexer 1, the first squaring 2 (the last is
left as local components), then the reciprocal of the row sum from those components
(:func:`veil.protocols.approx.reciprocal_rows.reciprocal_of_sum`: e and s truncated with every
bracket's candidate 2, the bracket 5 beside the candidates' Goldschmidt, the select 1), the
final product 2.  Before the planned max and the reciprocal's candidates: 66 rounds, 48.96
MB (the reciprocal 11 after the row sum's truncation); before this exp (quadratic t = 6, the
row sum truncated on its own, reciprocal 13): 73 rounds, 50.55 MB; before the 6-round
comparison and the bit-injection multiplexers: 123 rounds, 53.40 MB.
SPU's PUMA: 160 send steps, 47.0 MB (ours: 49% more bytes, 121 fewer rounds).
Attention from its queries and keys (:func:`attention`, what the models call): where one
tournament level takes a row's max, its comparisons read the scores' product reshared with
2f bits (1 round) while the scores' truncation (2) runs beside them, one round sooner; on a
decoding step's single query row the output projection also rides inside the last product
(2 rounds fewer, heads x more truncated elements).  A SmolLM2 decoding layer's attention,
scores to projected output: 32 critical-path rounds, against 2 + 31 + 2 before.
Trading robustness for bytes, ``base="quadratic", clip=None`` (exp valid for x - max >= -50
at t = 5, or >= -120 with ``squarings=6``, garbage below) costs 60.46 MB and 40 rounds
(t = 5, error 3.9e-3) or 64.66 MB and 42 rounds (t = 6, error 9.0e-4): only for logits
with a known spread.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.boolean import BoolShare
from veil.mpc.lockstep import RoundLink, Steps, lockstep, run_alone
from veil.mpc.ring_matmul import ring_matmul
from veil.protocols.approx._common import (
    FRAC_BITS,
    products,
    quantize,
    reshare_steps,
    row_max,
)
from veil.protocols.approx.exp import EXP_CLIP, base_steps, base_twin
from veil.protocols.approx.reciprocal_rows import reciprocal_of_sum, reciprocal_of_sum_twin
from veil.protocols.comparison import less_than_bits_steps
from veil.protocols.multiplication import local_product
from veil.protocols.reductions import pair_indices, plan_for, tournament_max_of
from veil.protocols.select import mux_bits
from veil.protocols.truncation import truncate_product_steps

MASK_OFFSET = float(2**20)
"""Subtracted from masked logits so that they never win the max."""
RECIPROCAL_EXTRA_BITS = 6
"""1/s carries f + 6 bits (at f = 18: e with f bits times 1/s stays far below 2^60)."""
PRODUCT_BITS = 60
SOFTMAX_SQUARINGS = 2
SOFTMAX_BASE = "poly8"
"""exp inside softmax: the degree-8 base and t = 2 (:mod:`veil.protocols.approx.exp`), 6 rounds
of base and 4 of squarings.  Before, quadratic t = 6 (2 + 12 rounds), which had cut the
softmax error 4x against t = 5 (9.2e-4 instead of 3.9e-3 on N(0, 3^2) rows)."""


def _extra_bits(f: int) -> int:
    """Extra bits of 1/s for f fractional bits: e (f bits, <= 1) times 1/s (f + extra bits,
    <= 1) must stay below 2^PRODUCT_BITS."""
    return max(0, min(RECIPROCAL_EXTRA_BITS, PRODUCT_BITS - 2 * f))


def exp_components(
    z: ArithShare, mask: torch.Tensor | None, squarings: int, base: str, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """This party's 3-out-of-3 components of e = exp(z) * mask and of its row sums, both
    with 2f bits, for z = x - max(x) <= 0.

    The clip zeroes the *base* (its comparison runs beside the base's products), so the
    squarings keep the zeros; the last squaring is left as the local product of its
    components, so that e and the row sum are truncated from the same components (the sum
    needs no truncation of its own).  The public mask multiplies those components (exact 0).
    """
    party = z.party
    if clip is None:
        p = run_alone(party, lambda link: base_steps(link, z, squarings, base))
    else:
        p, below = lockstep(
            party, lambda link: base_steps(link, z, squarings, base), lambda link: less_than_bits_steps(link, z, clip)
        )
        p = mux_bits(below, 0, p)
    for _ in range(squarings - 1):
        (p,) = products([(p, p)])
    components = local_product(p.data, p.data)  # e with 2f bits
    if mask is not None:
        components = components * mask.to(torch.int64)
    return components, components.sum(-1, keepdim=True)


def _row_window(n: int) -> tuple[int, int]:
    """The row sum lies in [1, n] (the max entry contributes exp(0) = 1)."""
    return 0, max(1, math.ceil(math.log2(n + 1)))


def softmax_twin(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    squarings: int = SOFTMAX_SQUARINGS,
    base: str = SOFTMAX_BASE,
    clip: float | None = EXP_CLIP,
    frac_bits: int | None = FRAC_BITS,
) -> torch.Tensor:
    """Float twin of :func:`softmax`."""
    e, r = _rows_twin(x, mask, squarings, base, clip, frac_bits)
    return quantize(e * r, frac_bits)


def softmax_matmul_twin(
    x: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, **options: Any
) -> torch.Tensor:
    """Float twin of :func:`softmax_matmul`; ``options`` as for :func:`softmax_twin`."""
    frac_bits = options.get("frac_bits", FRAC_BITS)
    e, r = _rows_twin(x, mask, **options)
    return quantize(quantize(e @ v.to(torch.float64), frac_bits) * r, frac_bits)


def _rows_twin(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    squarings: int = SOFTMAX_SQUARINGS,
    base: str = SOFTMAX_BASE,
    clip: float | None = EXP_CLIP,
    frac_bits: int | None = FRAC_BITS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(e, 1/sum(e)) as the protocol rounds them."""
    x = quantize(x.to(torch.float64), frac_bits)
    if mask is not None:
        x = x - (~mask).to(torch.float64) * MASK_OFFSET
    z = x - x.amax(-1, keepdim=True)
    p = base_twin(z, squarings, base, frac_bits)
    if clip is not None:
        p = torch.where(z < clip, torch.zeros_like(p), p)
    for _ in range(squarings - 1):
        p = quantize(p * p, frac_bits)
    e = p * p
    if mask is not None:
        e = e * mask
    total = e.sum(-1, keepdim=True)  # exact at 2f bits, as its components
    e = quantize(e, frac_bits)
    lo, hi = _row_window(x.shape[-1])
    r = reciprocal_of_sum_twin(total, lo, hi, _extra_bits(FRAC_BITS if frac_bits is None else frac_bits), frac_bits)
    return e, r


def softmax(
    x: ArithShare,
    mask: torch.Tensor | None = None,
    squarings: int = SOFTMAX_SQUARINGS,
    base: str = SOFTMAX_BASE,
    clip: float | None = EXP_CLIP,
) -> ArithShare:
    """Softmax of secret logits over the last dim (see the module docstring)."""
    party = x.party
    f = party.fxp.frac_bits
    with party.comm.scope("softmax"):
        components, rows = _exp_rows(x, mask, squarings, base, clip)
        lo, hi = _row_window(x.shape[-1])
        r, (e,), _ = reciprocal_of_sum(party, rows, 2 * f, lo, hi, _extra_bits(f), [(components, f, f)])
        (y,) = products([(e, r)], out_frac=[f])
    return y


def _exp_rows(
    x: ArithShare, mask: torch.Tensor | None, squarings: int, base: str, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask's offset, the row max, then :func:`exp_components`."""
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool, device=x.device)
        x = x - (~mask).to(torch.float64) * MASK_OFFSET
    return exp_components(x - row_max(x), mask, squarings, base, clip)


def softmax_matmul(
    x: ArithShare,
    v: ArithShare,
    mask: torch.Tensor | None = None,
    squarings: int = SOFTMAX_SQUARINGS,
    base: str = SOFTMAX_BASE,
    clip: float | None = EXP_CLIP,
) -> ArithShare:
    """softmax(x) @ v as (e @ v) * (1/s): attention's weighted values without the probabilities.

    e @ v (a fixed-point matmul, 2 rounds) rides beside the reciprocal's bracket
    (:func:`veil.protocols.approx.reciprocal_rows.reciprocal_of_sum`), and one product by 1/s per
    row ends it: the 2 rounds of probs @ v leave the critical path, and the final product
    has as many elements as the output (rows x head_dim) instead of the scores.  Same
    formula and range as :func:`softmax`; error: softmax's plus one ulp of e @ v times 1/s.
    """
    with x.party.comm.scope("softmax"):
        return _weighted_values(_exp_rows(x, mask, squarings, base, clip), x.shape[-1], v)


def _weighted_values(
    exp_rows: tuple[torch.Tensor, torch.Tensor], n: int, v: ArithShare, out: ArithShare | None = None
) -> ArithShare:
    """(e @ v) * (1/s) from exp's components and their row sums (:func:`exp_components`);
    with ``out``, the heads merged and projected by it (see :func:`attention`)."""
    party = v.party
    f = party.fxp.frac_bits
    components, rows = exp_rows
    lo, hi = _row_window(n)
    heads = None if out is None else _per_head(out, v)

    def beside(link: RoundLink, pieces: list[ArithShare]) -> Steps[ArithShare]:
        ev = yield from _matmul_steps(link, pieces[0], v)
        return ev if heads is None else (yield from _matmul_steps(link, ev, heads))

    r, _, ev = reciprocal_of_sum(
        party, rows, 2 * f, lo, hi, _extra_bits(f), [(components, f, f)], beside=beside
    )
    if heads is None:
        (y,) = products([(ev, r)], out_frac=[f])
        return y
    # sum over heads of r_h (ev_h @ W_h): one truncation of the summed components.
    summed = local_product(r.data, ev.data).sum(-3)
    raw = r.frac_bits + ev.frac_bits
    return run_alone(party, lambda link: truncate_product_steps(link, summed, raw - f, raw))


def _per_head(out: ArithShare, v: ArithShare) -> ArithShare:
    """The output projection (heads * d, m) as one (d, m) block per head: (heads, d, m)."""
    heads, d = v.shape[-3], v.shape[-1]
    if out.shape[0] != heads * d:
        raise ValueError(f"output projection of {out.shape[0]} rows for {heads} heads of {d}")
    return out.reshape(heads, d, out.shape[-1])


def attention(
    q: ArithShare,
    k: ArithShare,
    v: ArithShare,
    mask: torch.Tensor | None = None,
    out: ArithShare | None = None,
    squarings: int = SOFTMAX_SQUARINGS,
    base: str = SOFTMAX_BASE,
    clip: float | None = EXP_CLIP,
) -> ArithShare:
    """softmax(q @ k^T, mask) @ v from the queries and keys (batch, heads, rows, d) and
    (batch, heads, keys, d); with ``out`` (heads * d, m), the heads merged and projected:
    (batch, rows, m).

    ``out`` on a single query row (a decoding step): each head's e @ v is projected by its
    block of ``out`` beside the reciprocal (2 rounds inside its 9), and the heads' products
    by their 1/s are summed on their components and truncated once: the softmax's last
    product and the projection's truncation become one (2 rounds fewer), for heads * m
    instead of heads * d truncated elements per row (9x for SmolLM2: 98 KB more per layer
    and step).  A prompt's many rows take the plain product and projection instead.

    Where one all-pairs tournament level takes the max of a row (:func:`veil.protocols.reductions.plan_for`:
    a decoding step's rows, GPT-2's 32-long prompt rows), the scores' product is reshared
    with its 2f fractional bits (1 round) for the tournament's comparisons, while its
    truncation to f bits (2 rounds) runs beside them for the winner to select: the max starts
    one round sooner than from truncated scores.  Otherwise (multi-level tournaments) the
    scores are truncated first and go to :func:`softmax_matmul`.  Same result: the
    comparisons of the finer scores pick the same first maximum wherever the truncated
    scores do not tie (a tie within one ulp picks either, with the same value up to an ulp).
    Valid range: softmax's, and |q k| < 2^(62 - 2f) = 2^26 for the finer copy.
    Cost: beside softmax_matmul's, 8 bytes per score per party for the reshare.
    """
    party = q.party
    f = party.fxp.frac_bits
    raw = q.frac_bits + k.frac_bits
    z = local_product(q.data, k.transpose(-2, -1).data, ring_matmul)
    n = z.shape[-1]
    widths = plan_for(z.shape)
    fused_out = out is not None and q.shape[-2] == 1
    if raw <= f or n < 2 or len(widths) != 1 or widths[0] < n:
        scores = run_alone(party, lambda link: truncate_product_steps(link, z, raw - f, raw))
        if fused_out:
            with party.comm.scope("softmax"):
                rows = _exp_rows(scores, mask, squarings, base, clip)
                return _weighted_values(rows, n, v, out)
        return _merged(softmax_matmul(scores, v, mask, squarings, base, clip), out)
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool, device=q.device)
    offset = None if mask is None else (~mask).to(torch.float64) * MASK_OFFSET
    first, second = pair_indices(n)

    def comparisons(link: RoundLink) -> Steps[BoolShare]:
        fine = yield from reshare_steps(link, z, raw)
        if offset is not None:
            fine = fine - offset
        return (yield from less_than_bits_steps(link, fine[..., first], fine[..., second]))

    with party.comm.scope("softmax"):
        beats, scores = lockstep(
            party, comparisons, lambda link: truncate_product_steps(link, z, raw - f, raw)
        )
        if offset is not None:
            scores = scores - offset
        maximum = tournament_max_of(scores, beats)
        exp_rows = exp_components(scores - maximum, mask, squarings, base, clip)
        if fused_out:
            return _weighted_values(exp_rows, n, v, out)
        y = _weighted_values(exp_rows, n, v)
    return _merged(y, out)


def _merged(y: ArithShare, out: ArithShare | None) -> ArithShare:
    """Heads (batch, heads, rows, d) side by side, times ``out`` if given."""
    if out is None:
        return y
    batch, heads, rows, d = y.shape
    return y.transpose(1, 2).reshape(batch, rows, heads * d) @ out


def _matmul_steps(link: RoundLink, a: ArithShare, b: ArithShare) -> Steps[ArithShare]:
    """a @ b truncated to f bits from its 3-out-of-3 components, as steps (2 rounds)."""
    raw = a.frac_bits + b.frac_bits
    z = local_product(a.data, b.data, ring_matmul)
    return (yield from truncate_product_steps(link, z, raw - link.party.fxp.frac_bits, raw))
