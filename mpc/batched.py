"""One message per peer per round: a round's tensors for a peer travel concatenated.

A protocol that sends several tensors to the same peer in one round (the truncation's
thirds, each in its own role) would otherwise pay the transport's fixed cost per
message several times; over gRPC that cost is a Python-level send and receive per
message.  :class:`Outbox` collects a round's flat int64 tensors per destination and
sends each destination's as one; :class:`Inbox` receives a peer's message on the first
:meth:`Inbox.take` and hands it out in the order the sender added its pieces.  Bytes and
rounds are those of the separate messages; only the message count drops.  Both sides
must agree on the pieces and their sizes, which the protocols derive from public shapes.
"""

from __future__ import annotations

import torch

from veil.mpc.communicator import Communicator


class Outbox:
    """A round's outgoing tensors, concatenated per destination on :meth:`send`."""

    def __init__(self, comm: Communicator):
        self._comm = comm
        self._pieces: dict[int, list[torch.Tensor]] = {}

    def add(self, dst: int, tensor: torch.Tensor) -> None:
        self._pieces.setdefault(dst, []).append(tensor.reshape(-1))

    def send(self) -> None:
        """Send one message to every destination that has pieces, in the order they came."""
        pieces, self._pieces = self._pieces, {}
        for dst, parts in pieces.items():
            self._comm.send(dst, parts[0] if len(parts) == 1 else torch.cat(parts))


class Inbox:
    """A round's incoming messages, one per peer, taken apart piece by piece."""

    def __init__(self, comm: Communicator, device: torch.device):
        self._comm = comm
        self._device = device
        self._messages: dict[int, tuple[torch.Tensor, int]] = {}

    def take(self, src: int, numel: int) -> torch.Tensor:
        """The next ``numel`` elements from ``src`` (its message is received on first use)."""
        if src not in self._messages:
            self._messages[src] = (self._comm.recv(src).to(self._device), 0)
        message, start = self._messages[src]
        if start + numel > message.numel():
            raise ValueError(
                f"party {src} sent {message.numel()} elements this round, "
                f"fewer than the {start + numel} expected"
            )
        self._messages[src] = (message, start + numel)
        return message[start : start + numel]
