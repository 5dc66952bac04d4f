"""The communicator interface: how one party sends tensors to the other two.

Protocol code talks only to this interface, so the in-memory simulation
(:mod:`veil.mpc.inmemory`) and the gRPC deployment (:mod:`veil.parties.grpc_comm`) are
interchangeable.  Every implementation keeps the same counters, broken down by
the protocol scope that was active when the traffic happened.

Two round counts are kept:

- *Critical-path rounds* (``Traffic.depth``), the latency that counts: every message
  carries a logical clock, one more than the deepest clock its sender had received when
  it sent (Lamport, CACM 1978).  A party's depth is the largest clock it has sent or
  received; each increase is charged to the scope active when it happened, so a scope's
  depth is the number of message latencies it added to the critical path at that party.
  The largest depth over the parties is the number of sequential network latencies of
  the whole computation: total time >= depth x RTT / 2 on any network.  A clock depends
  only on the public order of messages, never on a secret, so sending it reveals nothing.
- *Send steps* (``Traffic.rounds``), the way SecretFlow-SPU reports rounds: a send that
  follows a receive (or is the first send of a scope) opens a new step; further sends
  before the next receive belong to the same step.  They undercount latency where the
  critical path crosses parties (a message that waits for another party's message).
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

WORLD_SIZE = 3


class PeerError(RuntimeError):
    """A peer failed: it disconnected, stalled past the timeout, or sent garbage."""

    def __init__(self, peer: int, message: str):
        super().__init__(f"party {peer}: {message}")
        self.peer = peer
        self.detail = message

    def __reduce__(self):
        # Picklable, so a party process can report it to the launcher.
        return (type(self), (self.peer, self.detail))


class PeerTimeoutError(PeerError, TimeoutError):
    """No message arrived from a peer within the configured timeout."""


@dataclass
class Traffic:
    """Counters for one protocol scope at one party."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    rounds: int = 0  # send steps (SPU's count)
    depth: int = 0  # critical-path rounds: increase of the logical clock inside the scope
    seconds: float = 0.0  # wall time inside the scope, including nested scopes
    calls: int = 0

    def add(self, other: Traffic) -> None:
        self.bytes_sent += other.bytes_sent
        self.bytes_received += other.bytes_received
        self.messages_sent += other.messages_sent
        self.rounds += other.rounds
        self.depth += other.depth
        self.seconds += other.seconds
        self.calls += other.calls


@dataclass
class CommStats:
    """Traffic per scope path (``"softmax/exp/mul"``); the empty path is unscoped traffic."""

    by_scope: dict[str, Traffic] = field(default_factory=lambda: defaultdict(Traffic))

    def total(self, prefix: str = "") -> Traffic:
        """Traffic summed over every scope path that starts with ``prefix``."""
        out = Traffic()
        for path, traffic in self.by_scope.items():
            if path == prefix or path.startswith(prefix + "/") or not prefix:
                out.add(traffic)
        return out

    def by_top_scope(self) -> dict[str, Traffic]:
        """Traffic grouped by the outermost scope name."""
        out: dict[str, Traffic] = defaultdict(Traffic)
        for path, traffic in self.by_scope.items():
            out[path.split("/", 1)[0]].add(traffic)
        return dict(out)

    def by_child_scope(self, parent: str) -> dict[str, Traffic]:
        """Traffic under ``parent`` grouped by the next scope name below it.

        Time is inclusive, so the children's seconds do not double count each other.
        """
        out: dict[str, Traffic] = defaultdict(Traffic)
        prefix = parent + "/"
        for path, traffic in self.by_scope.items():
            if path.startswith(prefix):
                child, _, rest = path[len(prefix):].partition("/")
                entry = out[child]
                entry.bytes_sent += traffic.bytes_sent
                entry.bytes_received += traffic.bytes_received
                entry.messages_sent += traffic.messages_sent
                entry.rounds += traffic.rounds
                entry.depth += traffic.depth
                if not rest:
                    entry.seconds += traffic.seconds
                    entry.calls += traffic.calls
        return dict(out)

    def by_leaf_scope(self) -> dict[str, Traffic]:
        """Traffic grouped by the innermost scope name (e.g. all ``mul`` wherever it ran)."""
        out: dict[str, Traffic] = defaultdict(Traffic)
        for path, traffic in self.by_scope.items():
            out[path.rsplit("/", 1)[-1]].add(traffic)
        return dict(out)


def tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class Communicator(ABC):
    """Point-to-point tensor transport between the three parties, with counters.

    Subclasses implement :meth:`_send` and :meth:`_recv`, which carry each message's
    logical clock beside the tensor; this base class does the bookkeeping.  Messages
    between a pair of parties are delivered in order.
    """

    def __init__(self, rank: int, timeout: float = 60.0):
        if rank not in range(WORLD_SIZE):
            raise ValueError(f"unknown party rank {rank}: expected 0, 1 or 2")
        self.rank = rank
        self.timeout = timeout
        self.stats = CommStats()
        self._scopes = threading.local()
        self._last_op_was_send = False
        self._received_clock = 0  # the deepest clock received so far
        self.clock = 0  # this party's depth: the deepest clock sent or received

    # -- transport, implemented by subclasses ---------------------------------
    @abstractmethod
    def _send(self, dst: int, tensor: torch.Tensor, clock: int) -> None:
        """Deliver ``tensor`` and its logical ``clock`` to party ``dst`` (may return early)."""

    @abstractmethod
    def _recv(self, src: int, timeout: float) -> tuple[torch.Tensor, int]:
        """Next (tensor, clock) from party ``src``; :class:`PeerTimeoutError` after ``timeout``."""

    def close(self) -> None:
        """Release transport resources."""

    # -- public API ------------------------------------------------------------
    @property
    def next_rank(self) -> int:
        return (self.rank + 1) % WORLD_SIZE

    @property
    def prev_rank(self) -> int:
        return (self.rank - 1) % WORLD_SIZE

    def send(self, dst: int, tensor: torch.Tensor) -> None:
        self._check_peer(dst)
        traffic = self._current()
        if not self._last_op_was_send:
            traffic.rounds += 1
        self._last_op_was_send = True
        traffic.bytes_sent += tensor_nbytes(tensor)
        traffic.messages_sent += 1
        stamp = self._received_clock + 1
        self._advance(stamp, traffic)
        self._send(dst, tensor, stamp)

    def recv(self, src: int) -> torch.Tensor:
        self._check_peer(src)
        tensor, stamp = self._recv(src, self.timeout)
        self._last_op_was_send = False
        traffic = self._current()
        traffic.bytes_received += tensor_nbytes(tensor)
        self._received_clock = max(self._received_clock, stamp)
        self._advance(stamp, traffic)
        return tensor

    def reset_counters(self) -> None:
        """Start counting afresh (a new request on long-lived links): zero the traffic
        counters and the logical clock.  Call it at every party before the request's first
        message, after the last message of the one before."""
        self.stats = CommStats()
        self._received_clock = 0
        self.clock = 0

    def observe_clock(self, stamp: int) -> None:
        """Take in the clock of a message received outside :meth:`recv` (idle polls),
        without charging any scope: later messages then carry the right depth."""
        self._received_clock = max(self._received_clock, stamp)
        self.clock = max(self.clock, stamp)

    def send_prev_recv_next(self, tensor: torch.Tensor) -> torch.Tensor:
        """The resharing step: send to party i-1, receive from party i+1 (one round)."""
        self.send(self.prev_rank, tensor)
        return self.recv(self.next_rank)

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Attribute the traffic inside the block to ``name`` (nested scopes form a path)."""
        stack = self._stack()
        stack.append(name)
        # A scope's first send always opens a round of its own, so a protocol's
        # round count does not depend on what ran before it.
        self._last_op_was_send = False
        start = time.perf_counter()
        try:
            yield
        finally:
            entry = self._current()
            entry.seconds += time.perf_counter() - start
            entry.calls += 1
            stack.pop()
            self._last_op_was_send = False

    # -- helpers ---------------------------------------------------------------
    def _advance(self, stamp: int, traffic: Traffic) -> None:
        if stamp > self.clock:
            traffic.depth += stamp - self.clock
            self.clock = stamp

    def _stack(self) -> list[str]:
        if not hasattr(self._scopes, "stack"):
            self._scopes.stack = []
        return self._scopes.stack

    def _current(self) -> Traffic:
        return self.stats.by_scope["/".join(self._stack())]

    def _check_peer(self, peer: int) -> None:
        if peer not in range(WORLD_SIZE) or peer == self.rank:
            raise ValueError(f"party {self.rank} cannot talk to unknown party {peer}")
