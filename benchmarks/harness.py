"""Measuring a protocol in the three-party simulation.

Each figure comes from one run: wall time (slowest party, from a common start),
bytes sent per party, critical-path rounds and send steps (from the communicator
counters), process peak memory, the plaintext torch time of the same computation, and the
error against plaintext.  The network model adds critical-path rounds x RTT + bytes /
bandwidth for PUMA's LAN and a WAN.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from veil import mpc

NETWORKS = {"LAN": (5e9, 1e-3), "WAN": (100e6, 40e-3)}  # (bits per second, round-trip time)


@dataclass
class Measurement:
    name: str
    wall_s: float
    bytes_sent: int  # the busiest party
    rounds: int  # send steps of the busiest party (SPU's count)
    depth: int  # critical-path rounds
    plain_s: float
    max_abs_error: float
    peak_rss_mb: float

    def network_estimate(self, network: str) -> float:
        return network_estimate(self.wall_s, self.depth, self.bytes_sent, network)

    def row(self) -> str:
        return (
            f"| {self.name} | {self.wall_s:.3f} | {self.bytes_sent / 1e6:.2f} | {self.depth} | "
            f"{self.rounds} | "
            f"{self.plain_s * 1e3:.2f} | {self.max_abs_error:.2e} | {self.network_estimate('LAN'):.3f} | "
            f"{self.network_estimate('WAN'):.2f} |"
        )


HEADER = (
    "| op | wall s | MB sent / party | critical-path rounds | send steps | plaintext ms "
    "| max abs err | LAN est. s | WAN est. s |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def network_estimate(wall_s: float, depth: int, bytes_sent: int, network: str) -> float:
    """Measured wall time plus what the network would add: depth x RTT + bytes / bandwidth."""
    bandwidth, rtt = NETWORKS[network]
    return wall_s + depth * rtt + bytes_sent * 8 / bandwidth


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_plain(fn: Callable[[], Any], repeats: int = 5) -> tuple[float, Any]:
    """Fastest of ``repeats`` runs after a warm-up: the least disturbed by other load."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def measure(
    name: str,
    inputs: dict[str, torch.Tensor],
    private_op: Callable[..., Any],
    plain_op: Callable[..., torch.Tensor],
    owners: dict[str, int] | None = None,
) -> Measurement:
    """Share ``inputs``, time ``private_op(**shares)``, open it, compare with ``plain_op(**inputs)``."""
    owners = owners or {}
    barrier = threading.Barrier(3)

    def party_fn(party: mpc.Party) -> tuple[float, int, int, int, torch.Tensor]:
        shares = {k: mpc.share(party, v, owner=owners.get(k, i % 3)) for i, (k, v) in enumerate(inputs.items())}
        private_op(**shares)  # warm-up: first-touch allocation would otherwise dominate
        party.comm.reset_counters()  # before the barrier: no party sends until all have reset
        barrier.wait()
        before = party.comm.stats.total()
        start = time.perf_counter()
        out = private_op(**shares)
        elapsed = time.perf_counter() - start
        after = party.comm.stats.total()
        opened = out.reveal()
        return (elapsed, after.bytes_sent - before.bytes_sent, after.rounds - before.rounds,
                after.depth - before.depth, opened)

    results = mpc.simulate(party_fn)
    plain_s, expected = time_plain(lambda: plain_op(**inputs))
    error = (results[0][4].double() - expected.double()).abs().max().item()
    return Measurement(
        name=name,
        wall_s=max(r[0] for r in results),
        bytes_sent=max(r[1] for r in results),
        rounds=max(r[2] for r in results),
        depth=max(r[3] for r in results),
        plain_s=plain_s,
        max_abs_error=error,
        peak_rss_mb=peak_rss_mb(),
    )
