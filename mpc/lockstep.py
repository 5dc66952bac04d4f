"""Independent protocol steps sharing rounds: several protocols, one message per peer per round.

A protocol written as *steps* is a generator.  In each round it adds what it sends to
``link.outbox``, yields, and then takes what it received from ``link.inbox`` (in the order
the sender added it).  :meth:`RoundLink.run` drives several such generators in lockstep: it
advances every one of them to its next yield, sends the round's outbox (one message per
peer, :class:`veil.mpc.batched.Outbox`), opens the round's inbox, and repeats until all have
returned.  Two independent steps of k and m rounds then cost max(k, m) critical-path
rounds instead of k + m, e.g. exp's clip comparison (5 rounds) beside its squarings (13),
or GeLU's segment comparison beside its powers.

Why it is sound: every party runs the same generators in the same order, so within a
round lane 1's pieces come before lane 2's in every message and each lane takes exactly
the pieces its twin at the peer added; the PRG draws happen in the same order at the two
holders of each key (lane 1's round-r code, then lane 2's).  Which lanes run, and how many
rounds each takes, depends on public shapes only.  The logical clock of every message of a
round is one more than the deepest clock received before it, as for one protocol.

A steps generator must not open communicator scopes (its code interleaves with other
lanes'); its plain wrapper does, around :meth:`RoundLink.run`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

from veil.mpc.batched import Inbox, Outbox
from veil.mpc.party import Party

T = TypeVar("T")
Steps = Generator[None, None, T]
"""A protocol as steps: yields once per round, after adding that round's messages."""


class RoundLink:
    """The current round's outbox and inbox, shared by the steps running in lockstep."""

    def __init__(self, party: Party):
        self.party = party
        self.outbox = Outbox(party.comm)
        self.inbox = Inbox(party.comm, party.device)

    def run(self, *lanes: Steps[Any]) -> list[Any]:
        """Drive ``lanes`` in lockstep; their return values, in order."""
        results: list[Any] = [None] * len(lanes)
        active = self._advance(list(enumerate(lanes)), results)
        while active:
            self.outbox.send()
            self.outbox = Outbox(self.party.comm)
            self.inbox = Inbox(self.party.comm, self.party.device)
            active = self._advance(active, results)
        return results

    @staticmethod
    def _advance(active: list[tuple[int, Steps[Any]]], results: list[Any]) -> list[tuple[int, Steps[Any]]]:
        still = []
        for index, lane in active:
            try:
                next(lane)
                still.append((index, lane))
            except StopIteration as done:
                results[index] = done.value
        return still


def run_alone(party: Party, steps: Callable[[RoundLink], Steps[T]]) -> T:
    """Run one protocol written as steps on its own."""
    link = RoundLink(party)
    return link.run(steps(link))[0]


def lockstep(party: Party, *steps: Callable[[RoundLink], Steps[Any]]) -> list[Any]:
    """Run independent protocols written as steps side by side, sharing their rounds."""
    link = RoundLink(party)
    return link.run(*(make(link) for make in steps))
