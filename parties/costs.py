"""What a request cost at the three parties, as each reports it in its Run reply.

The figures are the parties' public counters for the request (the same ones they log):
seconds, bytes sent, send steps and critical-path rounds.  The client prints them after
``veil share`` and ``veil infer``, as the demo does for the in-memory run.
"""

from __future__ import annotations

from dataclasses import dataclass

from veil.proto import veil_pb2


@dataclass(frozen=True)
class RequestCost:
    """The client's wall time and each party's (seconds, bytes sent, send steps, depth)."""

    wall_s: float
    parties: tuple[veil_pb2.PartyCost, ...]

    @property
    def depth(self) -> int:
        """Critical-path rounds: the deepest logical clock any party reached."""
        return max(p.depth for p in self.parties)

    @property
    def send_steps(self) -> int:
        return max(p.send_steps for p in self.parties)

    def then(self, later: RequestCost) -> RequestCost:
        """This request followed by ``later`` (a share in parts): times, bytes and rounds add."""
        parties = tuple(
            veil_pb2.PartyCost(
                seconds=a.seconds + b.seconds,
                bytes_sent=a.bytes_sent + b.bytes_sent,
                send_steps=a.send_steps + b.send_steps,
                depth=a.depth + b.depth,
            )
            for a, b in zip(self.parties, later.parties, strict=True)
        )
        return RequestCost(self.wall_s + later.wall_s, parties)

    def summary(self) -> str:
        sent = ", ".join(f"P{i} {p.bytes_sent / 1e6:.1f} MB" for i, p in enumerate(self.parties))
        return (
            f"wall {self.wall_s:.1f} s; sent {sent}; {self.depth} critical-path rounds "
            f"({self.send_steps} send steps)"
        )
