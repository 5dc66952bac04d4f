"""In-memory communicator: three parties as threads of one process (zero-copy)."""

from __future__ import annotations

import queue

import torch

from veil.mpc.communicator import WORLD_SIZE, Communicator, PeerError, PeerTimeoutError


class _Closed:
    """Sentinel put on every queue when a party aborts, so its peers fail fast."""

    def __init__(self, rank: int, reason: str):
        self.rank = rank
        self.reason = reason


class InMemoryNetwork:
    """One FIFO queue per ordered pair of parties."""

    def __init__(self) -> None:
        self.queues = {
            (src, dst): queue.SimpleQueue()
            for src in range(WORLD_SIZE)
            for dst in range(WORLD_SIZE)
            if src != dst
        }

    def communicator(self, rank: int, timeout: float = 60.0) -> InMemoryCommunicator:
        return InMemoryCommunicator(self, rank, timeout)

    def abort(self, rank: int, reason: str) -> None:
        """Tell everyone waiting on ``rank`` that it is gone."""
        for dst in range(WORLD_SIZE):
            if dst != rank:
                self.queues[(rank, dst)].put(_Closed(rank, reason))


class InMemoryCommunicator(Communicator):
    """Tensors are passed by reference: senders never mutate what they sent."""

    def __init__(self, network: InMemoryNetwork, rank: int, timeout: float = 60.0):
        super().__init__(rank, timeout)
        self.network = network

    def _send(self, dst: int, tensor: torch.Tensor, clock: int) -> None:
        self.network.queues[(self.rank, dst)].put((tensor, clock))

    def _recv(self, src: int, timeout: float) -> tuple[torch.Tensor, int]:
        try:
            item = self.network.queues[(src, self.rank)].get(timeout=timeout)
        except queue.Empty:
            raise PeerTimeoutError(src, f"no message within {timeout:g} s") from None
        if isinstance(item, _Closed):
            raise PeerError(src, f"aborted ({item.reason})")
        return item
