"""Maximum and argmax along a dimension by tree reduction.

Level by level, neighbouring candidates (2j, 2j+1) are compared and the larger kept
(an odd one out passes through), so n candidates need ceil(log2 n) levels, each one
comparison (10 rounds) and one multiplexer (1 round).  The comparison bits are kept;
the one-hot of the winner is then rebuilt top-down: a node's flag splits into
flag * c (left) and flag - flag * c (right), one multiplication round per level
(the first is free, its flag being the public 1).  Ties go to the lower index, like
``torch.argmax``.

Cost for n candidates per row: ceil(log2 n) * 11 rounds for the max, plus
ceil(log2 n) - 1 rounds for the one-hot; about n * (47.5 + 8) bytes per row per party
for the max and n * 8 for the one-hot.
"""

from __future__ import annotations

import math

import torch

from veil.mpc.arith import ArithShare, cat, stack
from veil.protocols.comparison import less_than
from veil.protocols.select import mux

COMPARISON_BYTES = 47.5
"""Bytes per party of one secret comparison (protocols/comparison.py)."""


def max_with_argmax(x: ArithShare, dim: int = -1) -> tuple[ArithShare, ArithShare]:
    """(max along ``dim``, one-hot integer share of the first maximum)."""
    party = x.party
    dim = dim % x.ndim
    with party.comm.scope("max"):
        current = x.movedim(dim, -1)
        levels: list[tuple[ArithShare, bool]] = []
        while current.shape[-1] > 1:
            n = current.shape[-1]
            pairs = n // 2
            left, right = current[..., 0:2 * pairs:2], current[..., 1:2 * pairs:2]
            left_wins = left >= right
            winners = mux(left_wins, left, right)
            odd = n % 2 == 1
            current = cat([winners, current[..., n - 1:]], dim=-1) if odd else winners
            levels.append((left_wins, odd))
        maximum = current[..., 0]

    with party.comm.scope("argmax"):
        flags = None  # None stands for the public all-ones flag at the root
        for left_wins, odd in reversed(levels):
            pairs = left_wins.shape[-1]
            if flags is None:
                left = left_wins
                right = 1 - left_wins
                rest = [ArithShare.from_public(party, 1).expand(*left_wins.shape[:-1], 1)] if odd else []
            else:
                pair_flags = flags[..., :pairs]
                left = pair_flags * left_wins
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
    point, no truncation either).  The wide tournament of the literature on maxima of short
    rows (e.g. SPU's and CrypTen's pairwise ``max`` for small n) trades bytes for depth.

    Cost per row of n: n(n-1)/2 comparisons (47.5 B each) and n(n-1) products (8 B each);
    critical-path rounds: one comparison (10) + ceil(log2(n - 1)) + 1, against
    ceil(log2 n) * 11 for the tree (n = 33: 16 against 66).  Valid for any inputs the
    comparison accepts (|x_i - x_j| < 2^62 in the ring).
    """
    n = x.shape[-1]
    if n == 1:
        return x
    party = x.party
    with party.comm.scope("tournament_max"):
        first, second = torch.triu_indices(n, n, offset=1)
        beats = less_than(x[..., first], x[..., second])  # c_ij: the later entry j is larger
        pairs = first.numel()
        position = torch.zeros(n, n, dtype=torch.long)
        position[first, second] = torch.arange(pairs)
        # Factors of w_j: c_ij for every earlier i, then (1 - c_jk) for every later k.
        factors = torch.stack([
            torch.cat([position[:j, j], pairs + position[j, j + 1:]]) for j in range(n)
        ])
        candidates = cat([beats, 1 - beats], dim=-1)[..., factors]  # (..., n, n - 1)
        while candidates.shape[-1] > 1:
            m = candidates.shape[-1]
            half = m // 2
            product = candidates[..., :half] * candidates[..., half : 2 * half]
            candidates = cat([product, candidates[..., 2 * half :]], dim=-1) if m % 2 else product
        winner = candidates[..., 0]  # (..., n) one-hot of the first maximum
        return (winner * x).sum(-1, keepdim=True)


def tournament_fits(x: ArithShare, budget_bytes: float) -> bool:
    """Whether an all-pairs tournament over the last dim of ``x`` sends at most
    ``budget_bytes`` per party in comparisons (the shape, hence the choice, is public)."""
    n = x.shape[-1]
    rows = math.prod(x.shape[:-1])
    return n > 2 and rows * n * (n - 1) / 2 * COMPARISON_BYTES <= budget_bytes
