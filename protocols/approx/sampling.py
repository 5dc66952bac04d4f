"""Secure sampling of the next token: temperature, top-k and top-p (nucleus), secret one-hot out.

Formula (inverse-CDF sampling without normalising):
    z_j = (x_j - max x) / T,  top-k and top-p drop entries (weight 0),  e_j = exp(z_j),
    c_j = e_1 + ... + e_j (c_V = S),  u uniform on {0, 2^-f, ..., 1 - 2^-f},
    b_j = [u S < c_j],  onehot_j = b_j - b_{j-1}  (b_0 = 0).
Token j is drawn iff c_{j-1} <= u S < c_j, i.e. with probability e_j / S up to 2^-f: the
softmax of the kept logits, with no reciprocal.  u S carries 2f fractional bits and c_j is
read with 2f bits (a local shift), so the comparison is exact; every e_j >= 0 and the
maximum's e is about 1, so b is non-decreasing with b_V = 1: the result is exactly one-hot
whatever the rounding of exp.  The V comparisons run as one batch (one comparison depth).

u (:func:`random_unit`): f random bits, each XOR-shared from the pairwise AES-CTR PRGs (bit
component j drawn by the two holders of key k_j, so no single party knows the bit), turned
into arithmetic shares by B2A and weighted by 2^-(f-i): no party knows u.
Top-k (HF's ``TopKLogitsWarper``): k - 1 rounds of argmax-and-remove (the argmax one-hot
times -2^20, a local step) and one more max give the k-th largest logit m_k; kept:
[x_j >= m_k] (ties at m_k kept, as in transformers).  The first max doubles as max x.
Top-p (HF's ``TopPLogitsWarper``): the nucleus is the smallest superlevel set {e_j >= tau}
with mass >= p S (the tokens whose strictly-larger mass is below p).  tau is found bit by bit
(f + 1 steps from 2^0 down to 2^-f): keep the bit iff sum_j e_j [e_j >= tau + bit] >= p S,
both sides compared exactly with 2f fractional bits.  No sorting; ties at the threshold kept.
Sources: inverse-CDF sampling; transformers' logits warpers; PUMA's exp (arXiv 2307.12533).

Valid range: |x| < 2^19, temperature >= MIN_TEMPERATURE, V * 2^(2f + 2) < 2^63 (V < 2^25 at
f = 18).  Error: the draw follows e_j / S of the twin's weights (exp's error, about 2e-4 abs
per weight, see :mod:`veil.protocols.approx.exp`) to within 2^-f per token; the one-hot is
exact; top-k is exact for logits more than one ulp apart; top-p is exact on the fixed-point
weights (a weight within exp's error of the threshold may fall on either side).
Cost per row of V logits, per party, with L = ceil(log2 V) (critical-path rounds, measured
as ``Traffic.depth``; bytes per element of the row, for V a multiple of 64, with
M = 26.29 bytes per element for an MSB, S = 21.33 for a multiplexer on its boolean bit
and C = M + 10.67 for a comparison with B2A, :mod:`veil.protocols.comparison`):
    temperature 1:      at most 6 L + 21 rounds (exp's clip beside its squarings); (M + S) (max) + (128 + M + S) (exp) + C
                        (the batched comparison) = 260.2 bytes
    temperature != 1:   at most 2 rounds and 16 bytes more (one truncation)
    top-k adds:         at most 7 L (k - 1) + 6 rounds; (M + 2 S)(k - 1) + C bytes
    top-p adds:         13 (f + 1) + 7 rounds (254 at f = 18); (C + 8)(f + 2) bytes
plus, per row, 32 f / 3 + 8 bytes for the draw and u S (their rounds are in the 21).
The bytes are those of large calls; the max trees' last levels and the per-row
comparisons round their thirds up to whole 64-element words (up to 8% more at V = 4096).
Measured at V = 49152 (L = 16), f = 18, one row: T = 0.7: 119 rounds, 13.61 MB (bound 119);
with top_p = 0.9: 373 rounds, 57.88 MB; top_k = 5 at T = 1: 571 rounds, 28.33 MB (party 2,
the busiest).  Top-k's cost grows with k, as k max trees must.
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare, cat
from veil.mpc.boolean import BoolShare
from veil.mpc.party import Party
from veil.protocols.approx._common import FRAC_BITS, quantize, row_max, with_frac
from veil.protocols.approx.exp import exp, exp_twin
from veil.protocols.comparison import less_than
from veil.protocols.conversions import b2a_bit
from veil.protocols.multiplication import mul
from veil.protocols.reductions import max_with_argmax

MIN_TEMPERATURE = 1e-4
"""(x - max) / T stays below 2^20 / T < 2^34 in magnitude, inside the comparisons' range."""
REMOVE_OFFSET = float(2**20)
"""Subtracted from a logit top-k has already counted: it can no longer win a max."""
DROP_OFFSET = 64.0
"""Subtracted from a scaled logit outside the top k: below exp's clip (-14), so e_j = 0."""


def check_sampling(vocab: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Refuse options outside the protocol's range (all of them public)."""
    if not temperature >= MIN_TEMPERATURE:
        raise ValueError(f"temperature must be >= {MIN_TEMPERATURE} (and > 0), got {temperature}")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be an integer in 1..{vocab} (the vocabulary), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")


def random_unit(party: Party, shape: tuple[int, ...]) -> ArithShare:
    """A secret uniform u on the f-bit grid of [0, 1), drawn jointly (no party knows it).

    Bit component j comes from key k_j, held by parties j - 1 and j only, so each party
    lacks one component of every bit.  Cost: B2A of f bits, 1 round, 32 f / 3 bytes per value.
    """
    f = party.fxp.frac_bits
    words = (*shape, f)
    bits = BoolShare(party, torch.stack((party.random_prev(words), party.random_next(words))))
    with party.comm.scope("random_unit"):
        arith = b2a_bit(bits)
    weights = torch.tensor([1 << i for i in range(f)], dtype=torch.int64, device=party.device)
    return with_frac((arith * weights).sum(-1), f)


def _top_k_keep(x: ArithShare, k: int) -> tuple[ArithShare, ArithShare]:
    """(max x (..., 1), integer 0/1 share of [x_j >= k-th largest])."""
    work, first = x, None
    for _ in range(k - 1):
        top, onehot = max_with_argmax(work, -1)
        first = top.unsqueeze(-1) if first is None else first
        work = work - onehot * REMOVE_OFFSET
    kth = row_max(work, group=2)
    return (kth if first is None else first), 1 - less_than(x, kth)


def _nucleus_keep(e: ArithShare, top_p: float) -> ArithShare:
    """Integer 0/1 share of [e_j >= tau], tau the nucleus threshold (see the module docstring)."""
    party = e.party
    f = party.fxp.frac_bits
    total = e.sum(-1, keepdim=True)
    # p S and the mass both read with 2f bits: the comparison has no rounding.
    target = with_frac(with_frac(total, 0) * round(top_p * 2**f), 2 * f)
    tau = ArithShare.from_public(party, torch.zeros(total.shape, dtype=torch.int64))
    for bit in range(f + 1):
        above = 1 - less_than(e, with_frac(tau + (1 << (f - bit)), f))
        mass = mul(above, e).sum(-1, keepdim=True)
        accept = 1 - less_than(with_frac(with_frac(mass, 0) * (1 << f), 2 * f), target)
        tau = tau + accept * (1 << (f - bit))
    return 1 - less_than(e, with_frac(tau, f))


def _inverse_cdf(e: ArithShare, u: ArithShare) -> ArithShare:
    """One-hot of the j with c_{j-1} <= u S < c_j, from one batched comparison."""
    f = e.party.fxp.frac_bits
    cumulative = ArithShare(e.party, e.data.cumsum(-1), 0)
    total = cumulative[..., -1:]
    scaled_u = with_frac(mul(with_frac(u, 0), total), 2 * f)
    below = less_than(scaled_u, with_frac(cumulative * (1 << f), 2 * f))
    return below - cat([below[..., :1] * 0, below[..., :-1]], dim=-1)


def sample(
    x: ArithShare,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> ArithShare:
    """Secret one-hot (..., V) of a token drawn from softmax(x / T) restricted by top-k/top-p.

    The uniform draw is made here, jointly; see the module docstring for formula and cost.
    """
    party = x.party
    check_sampling(x.shape[-1], temperature, top_k, top_p)
    with party.comm.scope("sample"):
        u = random_unit(party, tuple(x.shape[:-1]))
        if top_k is not None and top_k < x.shape[-1]:
            top, keep = _top_k_keep(x, top_k)
        else:
            top, keep = row_max(x, group=2), None
        z = x - top
        if temperature != 1.0:
            z = z * (1.0 / temperature)
        if keep is not None:
            z = z - (1 - keep) * DROP_OFFSET
        e = exp(z)
        if top_p is not None and top_p < 1:
            e = mul(_nucleus_keep(e, top_p), e)
        return _inverse_cdf(e, u.unsqueeze(-1))


def sampling_weights_twin(
    x: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    frac_bits: int = FRAC_BITS,
) -> torch.Tensor:
    """Float twin of the weights e_j of :func:`sample` (token j is drawn with e_j / sum e)."""
    check_sampling(x.shape[-1], temperature, top_k, top_p)
    x = quantize(x.to(torch.float64), frac_bits)
    z = x - x.amax(-1, keepdim=True)
    if temperature != 1.0:
        z = quantize(z * quantize(torch.tensor(1.0 / temperature), frac_bits), frac_bits)
    if top_k is not None and top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        z = torch.where(x >= kth, z, z - DROP_OFFSET)
    e = exp_twin(z, frac_bits=frac_bits)
    if top_p is not None and top_p < 1:
        e = e * (e >= _nucleus_threshold_twin(e, top_p, frac_bits))
    return e


def _nucleus_threshold_twin(e: torch.Tensor, top_p: float, frac_bits: int) -> torch.Tensor:
    """The largest tau on the 2^-f grid with sum_j e_j [e_j >= tau] >= p S (quantised p)."""
    target = e.sum(-1, keepdim=True) * quantize(torch.tensor(top_p), frac_bits)
    tau = torch.zeros_like(target)
    for bit in range(frac_bits + 1):
        candidate = tau + 2.0**-bit
        mass = (e * (e >= candidate)).sum(-1, keepdim=True)
        tau = torch.where(mass >= target, candidate, tau)
    return tau


def sample_twin(
    x: torch.Tensor,
    u: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    frac_bits: int = FRAC_BITS,
) -> torch.Tensor:
    """Float twin of :func:`sample` for given uniforms ``u`` (...,): the int64 one-hot."""
    weights = sampling_weights_twin(x, temperature, top_k, top_p, frac_bits)
    grid = float(2**frac_bits)
    return inverse_cdf_twin(weights, torch.floor(u.to(torch.float64) * grid) / grid)


def sampling_probabilities_exact(
    x: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution transformers' ``generate`` samples from (its temperature, top-k and
    top-p warpers with min_tokens_to_keep = 1, then softmax), in float64."""
    check_sampling(x.shape[-1], temperature, top_k, top_p)
    z = x.to(torch.float64) / temperature
    if top_k is not None:
        z = z.masked_fill(z < z.topk(top_k, dim=-1).values[..., -1:], float("-inf"))
    if top_p is not None and top_p < 1:
        ascending, order = z.sort(dim=-1)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[..., -1] = False
        z = z.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return z.softmax(-1)


def inverse_cdf_twin(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One-hot (int64) of the j with c_{j-1} <= u S < c_j for weights (..., V), u (...,)."""
    cumulative = weights.cumsum(-1)
    below = (u.unsqueeze(-1) * cumulative[..., -1:] < cumulative).to(torch.int64)
    return below - torch.nn.functional.pad(below[..., :-1], (1, 0))
