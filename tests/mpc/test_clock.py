"""Critical-path rounds: the logical clock on every message, over both transports."""

from __future__ import annotations

import torch

from veil import mpc


def _relay(party: mpc.Party) -> tuple[int, int]:
    """P0 -> P1 -> P2 -> P0, each party sending only after it has received: one send step
    per party, but three message latencies one after the other."""
    comm = party.comm
    token = torch.zeros(1, dtype=torch.int64)
    with comm.scope("relay"):
        if party.rank == 0:
            comm.send(1, token)
            comm.recv(2)
        else:
            comm.recv(party.rank - 1)
            comm.send((party.rank + 1) % 3, token)
    traffic = comm.stats.total("relay")
    return traffic.rounds, traffic.depth


def test_relay_depth_counts_the_chain_not_the_send_steps(run) -> None:
    results = run(_relay)
    assert [r[0] for r in results] == [1, 1, 1]  # send steps: one each
    assert [r[1] for r in results] == [3, 2, 3]  # P0 ends at the third latency
    assert max(r[1] for r in results) == 3


def _parallel_exchange(party: mpc.Party) -> int:
    """All three send first, then receive: one latency, however many messages."""
    comm = party.comm
    with comm.scope("exchange"):
        for _ in range(3):
            comm.send(comm.next_rank, torch.ones(4, dtype=torch.int64))
        for _ in range(3):
            comm.recv(comm.prev_rank)
    return comm.stats.total("exchange").depth


def test_messages_sent_before_any_receive_share_one_round(run) -> None:
    assert run(_parallel_exchange) == [1, 1, 1]


def _mul_then_mul(party: mpc.Party) -> tuple[int, int]:
    x = mpc.share(party, torch.tensor([1.5, -2.0]), owner=0)
    y = mpc.share(party, torch.tensor([2, 3]), owner=1)  # integer: no truncation
    start = party.comm.stats.total().depth
    z = (x * y) * y
    after = party.comm.stats.total().depth
    return after - start, int(z.reveal().round().sum())


def test_two_dependent_multiplications_are_two_rounds(run) -> None:
    results = run(_mul_then_mul)
    assert [r[0] for r in results] == [2, 2, 2]
    assert results[0][1] == int(1.5 * 4 - 2.0 * 9)
