"""Lockstep: independent protocols written as steps share their rounds, nothing else changes."""

from __future__ import annotations

import torch

from veil import mpc
from veil.mpc.lockstep import lockstep, run_alone
from veil.protocols.approx._common import products_steps
from veil.protocols.comparison import less_than_bits_steps


def _chain_steps(link, x, levels):
    """x^(2^levels) by repeated fixed-point squaring: 2 rounds per level."""
    for _ in range(levels):
        (x,) = yield from products_steps(link, [(x, x)])
    return x


def test_two_lanes_cost_the_longer_one_and_give_the_same_results():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(50, generator=g, dtype=torch.float64) * 0.5 + 0.5
    b = torch.randn(70, generator=g, dtype=torch.float64)

    def alone(party):
        x, y = mpc.share(party, a, owner=0), mpc.share(party, b, owner=1)
        x.reveal()  # every party's clock in step before the measured part
        party.comm.reset_counters()
        bits = run_alone(party, lambda link: less_than_bits_steps(link, y, 0))
        depth_comparison, bytes_comparison = party.comm.stats.total().depth, party.comm.stats.total().bytes_sent
        y.reveal()
        party.comm.reset_counters()
        squares = run_alone(party, lambda link: _chain_steps(link, x, 3))
        depth_chain, bytes_chain = party.comm.stats.total().depth, party.comm.stats.total().bytes_sent
        return squares.reveal(), (bits.reveal() & 1), (depth_comparison, depth_chain), bytes_comparison + bytes_chain

    def together(party):
        x, y = mpc.share(party, a, owner=0), mpc.share(party, b, owner=1)
        x.reveal()
        party.comm.reset_counters()
        squares, bits = lockstep(
            party, lambda link: _chain_steps(link, x, 3), lambda link: less_than_bits_steps(link, y, 0)
        )
        traffic = party.comm.stats.total()
        return squares.reveal(), (bits.reveal() & 1), traffic

    s1, c1, depths, bytes_alone = mpc.simulate(alone)[0]
    s2, c2, parallel = mpc.simulate(together)[0]
    assert depths == (5, 6)
    assert parallel.bytes_sent == bytes_alone
    assert parallel.depth == 6  # the comparison's 5 rounds ride in the chain's 6
    assert parallel.rounds == 6  # send steps too: one message per peer per round
    assert torch.equal(c1, c2) and torch.equal(c1, (b < 0).long())
    expected = a ** 8
    assert (s1 - expected).abs().max() < 1e-3 and (s2 - expected).abs().max() < 1e-3
