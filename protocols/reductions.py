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

from veil.mpc.arith import ArithShare, cat, stack
from veil.protocols.select import mux


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
