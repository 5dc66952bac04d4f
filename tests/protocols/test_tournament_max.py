"""All-pairs tournament max: exact, ties to the first maximum, one comparison depth."""

from __future__ import annotations

import math

import torch

from veil import mpc
from veil.protocols.approx._common import row_max
from veil.protocols.comparison import less_than_bits
from veil.protocols.reductions import tournament_max


def _depth(party: mpc.Party, fn) -> tuple[int, object]:
    party.comm.reset_counters()
    out = fn()
    return party.comm.stats.total().depth, out


def test_tournament_max_is_exact_with_ties(run, rng) -> None:
    x = torch.randn(5, 33, generator=rng, dtype=torch.float64).mul(8).round().div(4)  # many ties
    x[0] = 1.25  # a row of equal entries

    def fn(party):
        return tournament_max(mpc.share(party, x, owner=0)).reveal()

    torch.testing.assert_close(run(fn)[0], x.amax(-1, keepdim=True), atol=0, rtol=0)


def test_tournament_depth_is_one_comparison_bit_plus_the_and_tree() -> None:
    n = 33
    x = torch.randn(9, n, dtype=torch.float64)

    def fn(party):
        s = mpc.share(party, x, owner=0)
        comparison, _ = _depth(party, lambda: less_than_bits(s[..., :1], s[..., 1:2]))
        tournament, _ = _depth(party, lambda: tournament_max(s))
        return comparison, tournament

    comparison, tournament = mpc.simulate(fn)[0]
    assert tournament == comparison + math.ceil(math.log2(n - 1)) + 1


def test_row_max_plans_one_level_for_short_rows_and_several_for_long_ones() -> None:
    short = torch.randn(9, 33, dtype=torch.float64)  # one decoding step's attention rows
    long = torch.randn(12 * 128, 128, dtype=torch.float64)  # a BERT-base prompt's rows

    def fn(party):
        a, b = mpc.share(party, short, owner=0), mpc.share(party, long, owner=0)
        depth_short, max_short = _depth(party, lambda: row_max(a))
        depth_long, max_long = _depth(party, lambda: row_max(b))
        return depth_short, depth_long, max_short.reveal(), max_long.reveal()

    depth_short, depth_long, max_short, max_long = mpc.simulate(fn)[0]
    assert depth_short == 11  # one all-pairs level: MSB 5, AND tree 5, injection 1
    assert depth_long == 9 + 10  # levels of 8 and 16 (BUDGET_BYTES_PER_ELEMENT), not 128
    torch.testing.assert_close(max_short, short.amax(-1, keepdim=True), atol=2e-6, rtol=0)
    torch.testing.assert_close(max_long, long.amax(-1, keepdim=True), atol=2e-6, rtol=0)


def test_grouped_argmax_is_the_first_maximum_with_fewer_rounds(run, rng) -> None:
    """Rows with ties and a length that is not a power of the group size (padding)."""
    from veil.protocols.reductions import grouped_max_with_argmax, max_with_argmax

    x = torch.randn(3, 203, generator=rng, dtype=torch.float64).mul(4).round().div(4)
    x[1, 7] = x[1, 150] = x[1].max() + 1  # two equal maxima: the first wins
    x[2] = -0.5  # all equal

    def fn(party):
        s = mpc.share(party, x, owner=0)
        grouped_depth, (maximum, onehot) = _depth(party, lambda: grouped_max_with_argmax(s))
        tree_depth, _ = _depth(party, lambda: max_with_argmax(s))
        return grouped_depth, tree_depth, maximum.reveal(), onehot.reveal()

    grouped_depth, tree_depth, maximum, onehot = run(fn)[0]
    torch.testing.assert_close(maximum, x.amax(-1), atol=0, rtol=0)
    expected = torch.nn.functional.one_hot(x.argmax(-1), x.shape[-1])
    torch.testing.assert_close(onehot, expected, atol=0, rtol=0)
    assert grouped_depth < tree_depth


def test_long_rows_take_tournament_levels_in_fewer_rounds_than_the_tree(rng) -> None:
    """n = 128 and 32 (a BERT and a GPT-2 prompt's attention rows; 130 gives levels of 136,
    17 and 3 candidates with 8-way groups, 132, 33, 9 and 3 with 4-way ones): 9 rounds per
    8-way level (one boolean MSB, a 3-level AND, one bit injection), 8 per 4-way level (a
    2-level AND), a last level of 2 takes 6 and one of 3 takes 7; against 6 per binary
    level.  Exact, with ties.  Unforced, BERT-base's 12 x 128 x 128 scores take the planned
    levels of 8 and 16 (9 + 10 rounds)."""
    cases = (
        (40, 128, 2 * 9 + 6, 3 * 8 + 6, 7 * 6),
        (384, 32, 9 + 8, 2 * 8 + 6, 5 * 6),
        (40, 130, 2 * 9 + 7, 3 * 8 + 7, 8 * 6),
    )
    for rows, n, eight_way, four_way, binary in cases:  # too many rows for one all-pairs tournament
        x = torch.randn(rows, n, generator=rng, dtype=torch.float64).mul(4).round().div(4)

        def fn(party, x=x):
            s = mpc.share(party, x, owner=0)
            depths, outs = zip(*(_depth(party, lambda g=g: row_max(s, group=g)) for g in (8, 4, 2)))
            return depths, [out.reveal() for out in outs]

        depths, outs = mpc.simulate(fn)[0]
        assert depths == (eight_way, four_way, binary)
        for out in outs:
            torch.testing.assert_close(out, x.amax(-1, keepdim=True), atol=0, rtol=0)

    scores = torch.randn(12 * 128, 128, generator=rng, dtype=torch.float64)

    def bert(party):
        s = mpc.share(party, scores, owner=0)
        return _depth(party, lambda: row_max(s))[0]

    assert mpc.simulate(bert)[0] == 9 + 10


def test_plans_take_the_fewest_rounds_within_the_budget() -> None:
    """The planner's choices for the shapes the models meet, with their modelled cost, and
    its fallback to the cheapest plan when nothing fits."""
    from veil.protocols.tournament_plan import plan_cost, plan_levels

    assert plan_levels(128, 256 * 128) == (8, 16)
    assert plan_cost(128, (8, 16)) == (19, plan_cost(128, (8, 16))[1])
    assert plan_cost(128, (8, 16))[1] <= 256 * 128 < plan_cost(128, (128,))[1]
    assert plan_levels(32, 22_000) == (32,)  # GPT-2's prompt rows under the floor: one level
    widths = plan_levels(49152, 12 << 20, onehot=True)  # SmolLM2's logits, one row
    rounds, spent = plan_cost(49152, widths, onehot=True)
    assert widths[:2] == (8, 32) and rounds == 9 + 11 + 14 + 3 and spent <= 12 << 20
    wider = plan_levels(49152, 16 << 20, onehot=True)
    assert plan_cost(49152, wider, onehot=True)[0] == rounds - 1
    assert math.prod(widths) >= 49152
    assert plan_levels(64, 0.0) == (2,) * 6  # nothing fits: the cheapest, the binary levels
