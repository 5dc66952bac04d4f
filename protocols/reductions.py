"""Maximum and argmax along a dimension by tree reduction.

Level by level, neighbouring candidates (2j, 2j+1) are compared and the larger kept
(an odd one out passes through), so n candidates need ceil(log2 n) levels, each one
boolean MSB (5 rounds) and one multiplexer on it by bit injection (1 round,
:func:`veil.protocols.select.mux_bits`).  The comparison bits are kept, boolean; the
one-hot of the winner is then rebuilt top-down: a node's flag splits into flag * c (left,
bit injection again) and flag - flag * c (right), one round per level (the first is
B2A of the root's bits, its flag being the public 1).  Ties go to the lower index, like
``torch.argmax``.

Cost for n candidates per row: ceil(log2 n) * 6 rounds for the max, plus ceil(log2 n)
rounds for the one-hot; about n * (26.3 + 21.3) bytes per row per party for the max and
n * 21.3 for the one-hot.

Wider levels (:func:`tournament_levels`): groups of g candidates each take an all-pairs
tournament (one comparison depth), so a row needs fewer levels for more comparisons; the
widths come from :func:`plan_for` (:mod:`veil.protocols.tournament_plan`), the fewest rounds
within a byte budget.  Softmax's max and greedy decoding's argmax use them.
"""

from __future__ import annotations

import math

import torch

from veil.mpc.arith import ArithShare, cat, stack
from veil.mpc.boolean import BoolShare
from veil.protocols.comparison import less_than_bits
from veil.protocols.conversions import b2a_bit
from veil.protocols.select import mux_bits
from veil.protocols.tournament_plan import plan_levels


def max_with_argmax(x: ArithShare, dim: int = -1) -> tuple[ArithShare, ArithShare]:
    """(max along ``dim``, one-hot integer share of the first maximum)."""
    party = x.party
    dim = dim % x.ndim
    with party.comm.scope("max"):
        current = x.movedim(dim, -1)
        levels: list[tuple[BoolShare, bool]] = []
        while current.shape[-1] > 1:
            n = current.shape[-1]
            pairs = n // 2
            left, right = current[..., 0:2 * pairs:2], current[..., 1:2 * pairs:2]
            left_wins = less_than_bits(left, right) ^ 1  # boolean: bit injection, no B2A
            winners = mux_bits(left_wins, left, right)
            odd = n % 2 == 1
            current = cat([winners, current[..., n - 1:]], dim=-1) if odd else winners
            levels.append((left_wins, odd))
        maximum = current[..., 0]

    with party.comm.scope("argmax"):
        flags = None  # None stands for the public all-ones flag at the root
        for left_wins, odd in reversed(levels):
            pairs = left_wins.shape[-1]
            if flags is None:
                left = b2a_bit(left_wins)
                right = 1 - left
                rest = [ArithShare.from_public(party, 1).expand(*left_wins.shape[:-1], 1)] if odd else []
            else:
                pair_flags = flags[..., :pairs]
                left = mux_bits(left_wins, pair_flags, 0)
                right = pair_flags - left
                rest = [flags[..., pairs:]] if odd else []
            interleaved = stack([left, right], dim=-1).reshape(*left.shape[:-1], 2 * pairs)
            flags = cat([interleaved, *rest], dim=-1) if rest else interleaved
        if flags is None:
            flags = ArithShare.from_public(party, 1).expand(*current.shape)
        onehot = flags.movedim(-1, dim)
    return maximum, onehot


def tournament_max(x: ArithShare) -> ArithShare:
    """max over the last dim, shape (..., 1), by an all-pairs tournament: one comparison depth.

    Formula: for every pair i < j of a row, c_ij = [x_i < x_j] (one batched comparison).
    x_j is the *first* maximum iff it beats every earlier entry strictly and no later entry
    beats it::

        w_j = prod_{i<j} c_ij * prod_{k>j} (1 - c_jk),    max = sum_j w_j x_j

    so exactly one w_j is 1 (ties go to the lower index, like ``torch.argmax``) and the result
    is exact.  The products of integer 0/1 shares need no truncation: a tree of
    ceil(log2(n - 1)) multiplication rounds, then one product with x (integer times fixed
    point, no truncation either).  The wide tournament trades bytes for depth, as maxima of
    short rows are taken in the MPC literature (all comparisons in one round, then an AND).

    Cost per row of n: n(n-1)/2 boolean MSBs (26.3 B each), n - 2 ANDs per candidate on words
    that pack 64 candidates (8 B per word) and n bit injections (21.3 B); critical-path rounds: one MSB (5) + ceil(log2(n - 1)) + 1,
    against ceil(log2 n) * 6 for the tree (n = 33: 11 against 36).  Valid for any inputs the
    comparison accepts (|x_i - x_j| < 2^62 in the ring).
    """
    with x.party.comm.scope("tournament_max"):
        return _tournament(x)[0]


def tournament_max_of(values: ArithShare, beats: BoolShare) -> ArithShare:
    """:func:`tournament_max` of ``values`` (..., n) from its comparison bits [x_i < x_j] over
    :func:`pair_indices` made elsewhere, e.g. from a finer copy of the values beside their
    truncation (:func:`veil.protocols.approx.softmax.attention`): the ANDs and the selection."""
    with values.party.comm.scope("tournament_max"):
        return _tournament(values, beats)[0]


def pair_indices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) for every pair i < j of n entries, in the order of :func:`_tournament`'s bits."""
    first, second = torch.triu_indices(n, n, offset=1)
    return first, second


def _tournament(
    x: ArithShare, beats: BoolShare | None = None, values: ArithShare | None = None
) -> tuple[ArithShare, BoolShare]:
    """(max (..., 1), boolean one-hot of the first maximum (..., n)) of :func:`tournament_max`.

    The comparison bits stay boolean: their products are ANDs and the winner enters its
    product with x by bit injection (:func:`veil.protocols.select.mux_bits`), so no B2A.
    ``beats``: the comparison bits [x_i < x_j] over :func:`pair_indices`, if the caller
    made them (e.g. from a finer copy of x, beside x's own truncation); ``values``: what the
    winner selects (default x: another scale of the same values)."""
    n = x.shape[-1]
    first, second = pair_indices(n)
    if beats is None:
        beats = less_than_bits(x[..., first], x[..., second])  # c_ij: the later entry j is larger
    pairs = first.numel()
    position = torch.zeros(n, n, dtype=torch.long)
    position[first, second] = torch.arange(pairs)
    # Factors of w_j: c_ij for every earlier i, then (1 - c_jk) for every later k.
    factors = torch.stack(
        [torch.cat([position[:j, j], pairs + position[j, j + 1 :]]) for j in range(n)]
    )
    candidates = cat([beats, beats ^ 1], dim=-1)[..., factors]  # (..., n, n - 1)
    words = _pack_bits(candidates)  # (..., ceil(n / 64), n - 1): 64 candidates per word
    while words.shape[-1] > 1:
        m = words.shape[-1]
        half = m // 2
        product = words[..., :half] & words[..., half : 2 * half]
        words = cat([product, words[..., 2 * half :]], dim=-1) if m % 2 else product
    winner = _unpack_bits(words[..., 0], n)
    return mux_bits(winner, x if values is None else values, 0).sum(-1, keepdim=True), winner


WORD_BITS = 64


def _pack_bits(bits: BoolShare) -> BoolShare:
    """Bit 0 of (..., n, m) XOR-shared words packed along n: (..., ceil(n / 64), m), bit j
    of word w holding entry 64 w + j.  Local: XOR sharing is bitwise."""
    n = bits.shape[-2]
    words = -(-n // WORD_BITS)
    data = bits.data & 1
    pad = words * WORD_BITS - n
    if pad:
        data = torch.cat([data, data.new_zeros(*data.shape[:-2], pad, data.shape[-1])], dim=-2)
    data = data.reshape(*data.shape[:-2], words, WORD_BITS, data.shape[-1])
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=data.device).unsqueeze(-1)
    return BoolShare(bits.party, (data << shifts).sum(-2))


def _unpack_bits(words: BoolShare, n: int) -> BoolShare:
    """The inverse of :func:`_pack_bits` for one column: (..., ceil(n / 64)) -> (..., n)."""
    shifts = torch.arange(WORD_BITS, dtype=torch.int64, device=words.data.device)
    data = (words.data.unsqueeze(-1) >> shifts) & 1
    return BoolShare(words.party, data.reshape(*data.shape[:-2], -1)[..., :n])


BUDGET_BYTES_PER_ELEMENT = 256.0
"""Bytes per party per candidate that a planned tournament (:func:`plan_for`) may spend."""
BUDGET_FLOOR_BYTES = 16 << 20
"""Bytes per party any planned tournament may spend whatever its size: short rows (a decoding
step's attention, a GPT-2 prompt's 12 x 32 x 32 scores) take one all-pairs level."""


def plan_for(x: ArithShare | torch.Size, onehot: bool = False) -> tuple[int, ...]:
    """Level widths (:func:`veil.protocols.tournament_plan.plan_levels`) for the rows of ``x``
    (a share or its shape) within max(:data:`BUDGET_FLOOR_BYTES`,
    :data:`BUDGET_BYTES_PER_ELEMENT` per element) per party.  The shape, hence the plan, is
    public."""
    shape = x if isinstance(x, torch.Size) else x.shape
    n = shape[-1]
    rows = max(1, math.prod(shape[:-1]))
    return plan_levels(n, max(BUDGET_FLOOR_BYTES / rows, BUDGET_BYTES_PER_ELEMENT * n), onehot)


def tournament_levels(
    x: ArithShare, widths: int | tuple[int, ...]
) -> tuple[ArithShare, list[tuple[BoolShare, int]]]:
    """(max (...), per level the groups' boolean one-hots (..., G, g) and the level's width n).

    ``widths``: one group size for every level, or one per level (the last level takes
    whatever is left)."""
    levels: list[tuple[BoolShare, int]] = []
    current = x
    while current.shape[-1] > 1:
        n = current.shape[-1]
        if isinstance(widths, int):
            wanted = widths
        else:
            wanted = widths[len(levels)] if len(levels) < len(widths) - 1 else n
        width = min(wanted, n)
        pad = -n % width
        if pad:
            current = cat([current, current[..., :1].expand(*current.shape[:-1], pad)], dim=-1)
        grouped = current.reshape(*current.shape[:-1], (n + pad) // width, width)
        maxima, winner = _tournament(grouped)
        levels.append((winner, n))
        current = maxima[..., 0]
    return current[..., 0], levels


def grouped_max_with_argmax(
    x: ArithShare, group: int | None = None
) -> tuple[ArithShare, ArithShare]:
    """(max over the last dim (...), one-hot of the first maximum (..., n)) by a tree of
    all-pairs tournaments, ``group`` candidates each (default: the widths of
    :func:`plan_for`, one-hot rounds included).

    Formula: pad the row to a multiple of the group size with copies of its first entry (a copy
    sits after the original, so it never is the *first* maximum and its flag comes out 0),
    take each group's :func:`tournament_max` winner and its one-hot w, and repeat on the
    winners; the one-hot is rebuilt top-down, a child's flag being its parent's flag times
    its w (one integer product per level; the root's flag is the public 1).

    Cost for n candidates per row: per level of g one boolean MSB (5 rounds) +
    ceil(log2(g - 1)) + 1 rounds, then one round per level for the one-hot (B2A of the root's
    winner, then one bit injection per level); for n = 49152 the planned levels of 3, 32 and
    512: 36 critical-path rounds measured (levels of 8: 57; the binary tree: 112).  Bytes: about (g - 1)/2 MSBs (26.3 B)
    and g - 1 ANDs (8 B) per candidate per level, a geometric series over the levels.
    Ties go to the lowest index; exact for any inputs the comparison accepts.
    """
    party = x.party
    with party.comm.scope("max"):
        maximum, levels = tournament_levels(x, group if group is not None else plan_for(x, onehot=True))
    with party.comm.scope("argmax"):
        flags = None  # None: the public all-ones flag of the root
        for winner, n in reversed(levels):
            children = b2a_bit(winner) if flags is None else mux_bits(winner, flags[..., None], 0)
            flags = children.reshape(*children.shape[:-2], -1)[..., :n]
        if flags is None:
            flags = ArithShare.from_public(party, 1).expand(*x.shape)
    return maximum, flags
