"""The communication counters match the costs documented in each protocol's docstring."""

import pytest
import torch

from veil import mpc
from veil.mpc.boolean import BoolShare
from veil.protocols.comparison import less_than
from veil.protocols.conversions import a2b, b2a_bit, msb
from veil.protocols.select import mux_bits
from veil.protocols.truncation import truncate

N = 192  # elements per operand: three whole 64-element words, one dealt by each party


BLOCKS = -(-N // 64)  # bit-sliced blocks of 64 elements

THIRD = N // 3  # every party deals one third of the elements in the cross products

# Bit-sliced trees (protocols/bits.py): 8 bytes per row per block at each AND level.
# The MSB (protocols/carry.py): the dealer sends 2 x 15 one-hot rows of 16 nibble words,
# each neighbour 2 signals x 16 nibble words; then 29 rows of the tree over all thirds.
MSB_BYTES = 8 * (THIRD // 64) * (2 * 15 * 16 + 2 * 2 * 16 + 3 * (2 * (8 + 4 + 2) + 1))
ZERO_TEST_BYTES = 8 * N + 8 * BLOCKS * (32 + 16 + 8 + 4 + 2 + 1)
B2A_BYTES = 8 * THIRD * (2 + 1 + 1)  # the dealer sends two ring elements, each neighbour one
SELECT_BYTES = 8 * THIRD * (6 + 1 + 1)  # bit injection: three cross products
# The MSB without the tree's last AND row, then the root's AND and B2A as one round of
# cross products with 7 one-hot rows (the dealer sends 14 ring elements, each neighbour 1).
FUSED_LESS_THAN_BYTES = MSB_BYTES - 8 * 3 + 8 * THIRD * (14 + 1 + 1)


def measure(run, op):
    """(send steps, bytes sent, (clock before, clock after)) of ``op`` at each party."""

    def fn(party):
        x = mpc.share(party, torch.linspace(-3, 3, N).reshape(16, 12), 0)
        y = mpc.share(party, torch.linspace(2, -1, N).reshape(16, 12), 1)
        x.reveal()  # every party has now received the same depth: the clocks start level
        before, clock = party.comm.stats.total(), party.comm.clock
        op(x, y)
        after = party.comm.stats.total()
        return after.rounds - before.rounds, after.bytes_sent - before.bytes_sent, (clock, party.comm.clock)

    return run(fn)


def critical_path_rounds(results) -> int:
    """Depth the op added: the deepest clock after it minus the deepest before."""
    return max(c[1] for *_, c in results) - max(c[0] for *_, c in results)


def integer(x):
    x = x * 1
    x.frac_bits = 0
    return x


@pytest.mark.parametrize(
    "name,op,rounds,total_bytes",
    [
        ("mul (integer)", lambda x, y: integer(x) * integer(y), 1, 8 * N),
        ("mul + trunc", lambda x, y: x * y, 2, 64 * N // 3),  # N % 3 == 0: equal thirds
        ("trunc", lambda x, y: truncate(x, 18), 2, 16 * N),
        ("a2b", lambda x, y: a2b(x), 8, 104 * N),
        ("msb", lambda x, y: msb(x), 5, MSB_BYTES),
        ("b2a", lambda x, y: b2a_bit(BoolShare(x.party, x.data)), 1, B2A_BYTES),
        ("less_than", lambda x, y: x < y, 6, MSB_BYTES + B2A_BYTES),
        ("less_than fused root", lambda x, y: less_than(x, y, fused_root=True), 5, FUSED_LESS_THAN_BYTES),
        ("equal", lambda x, y: x.eq(y), 8, ZERO_TEST_BYTES + B2A_BYTES),
        ("relu", lambda x, y: x.relu(), 6, MSB_BYTES + SELECT_BYTES),
        ("mux_bits", lambda x, y: mux_bits(BoolShare(x.party, x.data), x, y), 1, SELECT_BYTES),
        ("mux", lambda x, y: mpc.where(integer(x), x, y), 1, 8 * N),
        ("reveal", lambda x, y: x.reveal(), 1, 8 * N),
    ],
)
def test_elementwise_costs(run, name, op, rounds, total_bytes):
    results = measure(run, op)
    # Send steps of the slowest party (truncation's helper party sends once), and the
    # critical path: for these protocols every round waits on the one before.
    assert max(r for r, _, _ in results) == rounds, name
    assert critical_path_rounds(results) == rounds, name
    for _, party_bytes, _ in results:
        assert party_bytes == total_bytes, name


def test_comparison_of_many_elements_costs_under_48_bytes_each():
    n = 64 * 64

    def fn(party):
        x = mpc.share(party, torch.linspace(-5, 5, n), 0)
        before = party.comm.stats.total().bytes_sent
        _ = x < 0.5
        return party.comm.stats.total().bytes_sent - before

    for sent in mpc.simulate(fn):
        assert sent / n < 48


def test_fixed_point_matmul_costs_two_rounds_and_64_thirds_bytes_per_output():
    """The product's resharing round is the truncation's opening (truncate_product)."""

    def fn(party):
        x = mpc.share(party, torch.ones(16, 32), 0)
        w = mpc.share(party, torch.ones(32, 8), 1)
        before, clock = party.comm.stats.total(), party.comm.clock
        x @ w
        after = party.comm.stats.total()
        return after.rounds - before.rounds, after.bytes_sent - before.bytes_sent, (clock, party.comm.clock)

    results = mpc.simulate(fn)
    assert max(r for r, _, _ in results) == 2
    clocks = [c for _, _, c in results]  # critical-path rounds, not only send steps
    assert max(after for _, after in clocks) - max(before for before, _ in clocks) == 2
    # 128 outputs in thirds of 42, 43, 43: each party is A, B and H on one third each.
    assert sum(sent for _, sent, _ in results) == 128 * 64
    assert all(abs(sent - 128 * 64 / 3) <= 16 for _, sent, _ in results)


def test_integer_matmul_costs_one_element_per_output():
    def fn(party):
        x = integer(mpc.share(party, torch.ones(16, 32), 0))
        w = integer(mpc.share(party, torch.ones(32, 8), 1))
        before = party.comm.stats.total()
        x @ w
        after = party.comm.stats.total()
        return after.rounds - before.rounds, after.bytes_sent - before.bytes_sent

    for rounds, sent in mpc.simulate(fn):
        assert rounds == 1 and sent == 16 * 8 * 8
