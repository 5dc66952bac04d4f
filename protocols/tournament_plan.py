"""How wide each level of a max (or argmax) tournament should be: fewest rounds within a byte budget.

A level splits the candidates of a row into groups of g and keeps each group's maximum by an
all-pairs tournament (:func:`veil.protocols.reductions.tournament_levels`): one boolean MSB of
the g(g-1)/2 pairs (5 rounds), an AND tree over each candidate's g - 1 factors
(ceil(log2(g - 1)) rounds) and one bit injection of the winner (1 round).  Wide groups need
few levels but many comparisons; a row of n needs widths whose product is at least n (the
last level takes what is left).  :func:`plan_levels` searches the widths of
:data:`LEVEL_WIDTHS` (each the widest for its AND depth: 2, 3, 5, 9, 17, 33, 65, and the powers
of two, which pad less) and the whole remaining row, and returns the plan with the fewest
critical-path rounds whose bytes per row stay within the budget (ties: fewest bytes).

Cost model per candidate entering a level of width g, per party (measured constants of the
comparison and multiplexer modules): (g - 1)/2 boolean MSBs of 26.3 bytes, g - 2 ANDs of 8
bytes on words that pack the group's g bits (so 8 (g - 2) ceil(g / 64) / g bytes), one bit
injection of 21.3 bytes; padding to a multiple of g counts.  An argmax adds one
round per level to rebuild its one-hot (:func:`veil.protocols.reductions.grouped_max_with_argmax`).
Examples (:func:`veil.protocols.reductions.plan_for`'s budget, 256 bytes per element or 16 MB
per call): BERT-base's 128-long attention rows take (8, 16), 19 rounds (the binary tree:
42); GPT-2's 32-long prompt rows one level, 11 rounds; SmolLM2's 49,152 logits (3, 32, 512),
33 rounds + 3 for the one-hot (levels of 8: 57).
"""

from __future__ import annotations

import functools
import math

LEVEL_WIDTHS = (2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65)
MSB_BYTES = 26.3
AND_BYTES = 8.0
INJECTION_BYTES = 21.3


def level_rounds(width: int) -> int:
    """Critical-path rounds of one level of ``width``-candidate groups."""
    return 5 + max(0, math.ceil(math.log2(width - 1))) + 1


def level_bytes(width: int) -> float:
    """Bytes per party per candidate entering a level of ``width``-candidate groups (the
    AND tree works on the group's bits packed into ceil(width / 64) words)."""
    packed_and = max(0, width - 2) * AND_BYTES * math.ceil(width / 64) / width
    return (width - 1) / 2 * MSB_BYTES + packed_and + INJECTION_BYTES


@functools.cache
def _frontier(n: int, onehot: bool) -> tuple[tuple[int, float, tuple[int, ...]], ...]:
    """Pareto-optimal (rounds, bytes per row, widths) reducing n candidates to one."""
    if n == 1:
        return ((0, 0.0, ()),)
    options = []
    for width in sorted({w for w in LEVEL_WIDTHS if w < n} | {n}):
        groups = -(-n // width)
        rounds = level_rounds(width) + (1 if onehot else 0)
        spent = groups * width * level_bytes(width)
        for rest_rounds, rest_bytes, rest in _frontier(groups, onehot):
            options.append((rounds + rest_rounds, spent + rest_bytes, (width, *rest)))
    options.sort(key=lambda option: (option[0], option[1]))
    front, fewest = [], math.inf
    for option in options:
        if option[1] < fewest:
            front.append(option)
            fewest = option[1]
    return tuple(front)


def plan_levels(n: int, budget_bytes_per_row: float, onehot: bool = False) -> tuple[int, ...]:
    """The level widths for rows of n with the fewest rounds within the budget (the
    cheapest plan if none fits)."""
    front = _frontier(n, onehot)
    for _, spent, widths in front:
        if spent <= budget_bytes_per_row:
            return widths
    return front[-1][2]


def plan_cost(n: int, widths: tuple[int, ...], onehot: bool = False) -> tuple[int, float]:
    """(critical-path rounds, bytes per row per party) of ``widths`` on rows of n."""
    rounds, spent = 0, 0.0
    for width in widths:
        width = min(width, n)
        groups = -(-n // width)
        rounds += level_rounds(width) + (1 if onehot else 0)
        spent += groups * width * level_bytes(width)
        n = groups
    return rounds, spent
