"""Measuring a protocol in the three-party simulation.

Each figure comes from one run: wall time (slowest party, from a common start),
bytes sent and rounds per party (from the communicator counters), process peak memory,
the plaintext torch time of the same computation, and the error against plaintext.
The network model adds rounds x RTT + bytes / bandwidth for PUMA's LAN and a WAN.
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
    rounds: int  # the busiest party
    plain_s: float
    max_abs_error: float
    peak_rss_mb: float

    def network_estimate(self, network: str) -> float:
        bandwidth, rtt = NETWORKS[network]
        return self.wall_s + self.rounds * rtt + self.bytes_sent * 8 / bandwidth

    def row(self) -> str:
        return (
            f"| {self.name} | {self.wall_s:.3f} | {self.bytes_sent / 1e6:.2f} | {self.rounds} | "
            f"{self.plain_s * 1e3:.2f} | {self.max_abs_error:.2e} | {self.network_estimate('LAN'):.3f} | "
            f"{self.network_estimate('WAN'):.2f} |"
        )


HEADER = (
    "| op | wall s | MB sent / party | rounds | plaintext ms | max abs err | LAN est. s | WAN est. s |\n"
    "|---|---|---|---|---|---|---|---|"
)


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

    def party_fn(party: mpc.Party) -> tuple[float, int, int, torch.Tensor]:
        shares = {k: mpc.share(party, v, owner=owners.get(k, i % 3)) for i, (k, v) in enumerate(inputs.items())}
        private_op(**shares)  # warm-up: first-touch allocation would otherwise dominate
        barrier.wait()
        before = party.comm.stats.total()
        start = time.perf_counter()
        out = private_op(**shares)
        elapsed = time.perf_counter() - start
        after = party.comm.stats.total()
        opened = out.reveal()
        return elapsed, after.bytes_sent - before.bytes_sent, after.rounds - before.rounds, opened

    results = mpc.simulate(party_fn)
    plain_s, expected = time_plain(lambda: plain_op(**inputs))
    error = (results[0][3].double() - expected.double()).abs().max().item()
    return Measurement(
        name=name,
        wall_s=max(r[0] for r in results),
        bytes_sent=max(r[1] for r in results),
        rounds=max(r[2] for r in results),
        plain_s=plain_s,
        max_abs_error=error,
        peak_rss_mb=peak_rss_mb(),
    )
