"""The power-of-two bracket of a positive secret (the normalisation of reciprocal and rsqrt).

For v = x * 2^f (the ring value), the bracket is the bit position p of v's top bit,
2^p <= v < 2^(p+1), restricted to a public window p_0 < ... < p_{W-1}; it is returned as an
integer 0/1 one-hot share over the window, so that any public table of per-bracket
constants (a power of two to normalise by, a scale factor) is a dot product: free.
Values below the window land in p_0, values above it in p_{W-1}.

Two methods (SPU's ``highestOneBit`` is the second):

- ``"compare"``: one batched comparison [v >= 2^p] per window position, its last AND and
  B2A fused (5 rounds, 68.9 (W - 1) bytes); the one-hot is the difference of neighbouring
  comparison bits.  Fewest rounds; the choice for one
  value per row (softmax's reciprocal, LayerNorm's rsqrt).
- ``"bits"``: bit decomposition (A2B, 8 rounds, 104 bytes), a downward prefix-OR from the
  top of the word (6 AND rounds, 8 bytes each), the top bit isolated as y ^ (y >> 1)
  (free), and B2A of the W window bits (1 round, 10.67 W bytes): 15 rounds and
  152 + 10.67 W bytes (e.g. 514.7 instead of 2273.7 bytes for W = 34; fewer bytes than
  ``"compare"`` from W = 4 on).  The choice for elementwise use of wide windows on large
  tensors.

The one-hot also selects one of W secret candidates, one per bracket, computed beside the
bracket (:func:`bracket_select_steps`, one plain multiplication, 1 round).
"""

from __future__ import annotations

import math

import torch

from veil.mpc.arith import ArithShare, cat
from veil.mpc.boolean import BoolShare
from veil.mpc.lockstep import RoundLink, Steps, run_alone
from veil.protocols.approx._common import with_frac
from veil.protocols.carry import msb_split_arith_steps
from veil.protocols.conversions import a2b, b2a_bit
from veil.protocols.multiplication import local_product

METHODS = ("compare", "bits")
RING_BITS = 64


def _by_comparison(v: ArithShare, positions: torch.Tensor) -> ArithShare:
    return run_alone(v.party, lambda link: _by_comparison_steps(link, v, positions))


def _by_comparison_steps(link: RoundLink, v: ArithShare, positions: torch.Tensor) -> Steps[ArithShare]:
    thresholds = torch.pow(2, positions[1:].to(torch.int64))
    with v.party.comm.scope("less_than"):
        below = yield from msb_split_arith_steps(link, v.unsqueeze(-1) - thresholds)
    at_least = 1 - below  # [v >= 2^p], p = p_1 .. p_{W-1}
    width = positions.numel()
    first = 1 - at_least[..., 0:1]
    last = at_least[..., width - 2 : width - 1]
    middle = [at_least[..., : width - 2] - at_least[..., 1:]] if width > 2 else []
    return cat([first, *middle, last], dim=-1)


def _by_bits(v: ArithShare, positions: torch.Tensor) -> ArithShare:
    low, high = int(positions[0]), int(positions[-1])
    words = a2b(v)
    for level in range(math.ceil(math.log2(RING_BITS - 1 - low))):
        words = words | (words >> (1 << level))  # bit p: OR of bits p .. p + 2^(level+1) - 1
    floor = 1 << low  # values below the window count as bracket p_0
    words = words ^ floor ^ (words & floor)  # words | floor, with a public operand: local
    # Only the top set bit survives; bit `high` keeps the OR of everything above (saturation).
    top = words ^ ((words >> 1) & ~(1 << high))
    # Bit p of every word, one new last-dim entry per window position (local: XOR sharing).
    window = (top.data.unsqueeze(-1) >> positions.to(device=v.device, dtype=torch.int64)) & 1
    return b2a_bit(BoolShare(v.party, window))


def power_of_two_bracket(
    x: ArithShare, positions: torch.Tensor, method: str = "compare"
) -> ArithShare:
    """Integer one-hot (..., W) of the bracket of ring(x) over the window ``positions``."""
    if method not in METHODS:
        raise ValueError(f"unknown bracket method {method!r}: expected one of {METHODS}")
    v = with_frac(x, 0)
    if positions.numel() == 1:  # a one-position window: the bracket is known
        return ArithShare.from_public(v.party, torch.ones(1, dtype=torch.int64)).expand(*v.shape, 1)
    if method == "compare":
        return _by_comparison(v, positions)
    return _by_bits(v, positions)


def power_of_two_bracket_steps(link: RoundLink, x: ArithShare, positions: torch.Tensor) -> Steps[ArithShare]:
    """:func:`power_of_two_bracket` by comparison, as steps (:mod:`veil.mpc.lockstep`): its
    5 rounds can carry work that does not need the bracket."""
    v = with_frac(x, 0)
    if positions.numel() == 1:
        return ArithShare.from_public(v.party, torch.ones(1, dtype=torch.int64)).expand(*v.shape, 1)
    return (yield from _by_comparison_steps(link, v, positions))


def bracket_dot(onehot: ArithShare, table: torch.Tensor) -> ArithShare:
    """sum_p onehot_p * table_p for a public integer table over the window (free)."""
    return (onehot * table.to(torch.int64)).sum(-1)


def bracket_select_steps(link: RoundLink, onehot: ArithShare, candidates: ArithShare) -> Steps[ArithShare]:
    """sum_p onehot_p candidates_p over the last dim, (..., 1): one plain multiplication
    (the one-hot is an integer 0/1, so no truncation), 1 round, 8 bytes per row per party.
    The one-hot of an (..., 1) bracket is (..., 1, W); the candidates are (..., W)."""
    party = link.party
    chosen = local_product(onehot.data.reshape(candidates.data.shape), candidates.data).sum(-1, keepdim=True)
    chosen += party.zero_share(chosen.shape)
    link.outbox.add(party.prev_rank, chosen)
    yield
    received = link.inbox.take(party.next_rank, chosen.numel()).reshape(chosen.shape)
    return ArithShare(party, torch.stack((chosen, received)), candidates.frac_bits)
