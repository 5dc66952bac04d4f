"""Outbox/Inbox: a round's tensors for a peer travel as one message, taken apart in order."""

import pytest
import torch

from veil import mpc
from veil.mpc.batched import Inbox, Outbox


def test_pieces_arrive_in_order_as_one_message_per_peer():
    def fn(party):
        comm = party.comm
        comm.reset_counters()  # after the session's key agreement
        outbox = Outbox(comm)
        for piece in range(3):  # three pieces to the next party, one to the previous
            outbox.add(comm.next_rank, torch.full((2, piece + 1), 10 * party.rank + piece))
        outbox.add(comm.prev_rank, torch.tensor([party.rank]))
        outbox.send()
        inbox = Inbox(comm, torch.device("cpu"))
        got = [inbox.take(comm.prev_rank, 2 * (piece + 1)) for piece in range(3)]
        return got, inbox.take(comm.next_rank, 1), comm.stats.total()

    for rank, (got, back, traffic) in enumerate(mpc.simulate(fn)):
        prev = (rank - 1) % 3
        assert [g.tolist() for g in got] == [[10 * prev + p] * 2 * (p + 1) for p in range(3)]
        assert back.tolist() == [(rank + 1) % 3]
        assert traffic.messages_sent == 2 and traffic.rounds == 1
        assert traffic.bytes_sent == (2 + 4 + 6 + 1) * 8


def test_taking_more_than_was_sent_names_the_sender():
    def fn(party):
        outbox = Outbox(party.comm)
        outbox.add(party.comm.next_rank, torch.zeros(3, dtype=torch.int64))
        outbox.send()
        Inbox(party.comm, torch.device("cpu")).take(party.comm.prev_rank, 4)

    with pytest.raises(ValueError, match=r"party \d sent 3 elements this round, fewer than the 4"):
        mpc.simulate(fn)
