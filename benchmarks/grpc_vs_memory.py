"""Throughput of the transports: large int64 tensors over gRPC loopback vs in memory.

    python -m benchmarks.grpc_vs_memory                  # 3 MB, 32 MB, 256 MB tensors
    python -m benchmarks.grpc_vs_memory --quick          # 3 MB and 32 MB, fewer repeats
    python -m benchmarks.grpc_vs_memory --insecure       # also gRPC without TLS

First the median round trip of one int64 between two parties (the latency floor of a
protocol round).  Then every party repeatedly does the resharing step (send to party i-1, receive from party
i+1) with one int64 tensor, so three directed links (0->2, 1->0, 2->1) are busy at once
and every party sends on one while it receives on another, as in a multiplication.  Reported per party: MB/s sent (10^6 bytes / s), bytes and messages
sent (from the communicator's counters), over

- memory:       the in-memory communicator (three threads, tensors passed by reference);
- grpc-threads: three GrpcCommunicators in this process (one GIL for all three parties);
- grpc-procs:   three party processes, as deployed on one host.

On one host the parties share the CPU cores with gRPC's threads (2 cores here), so the
gRPC figures are a lower bound for a deployment with a machine per party.
"""

from __future__ import annotations

import argparse
import time

import torch

from veil import mpc
from veil.parties.local import GrpcCluster, GrpcThreads

MB = 1e6


def exchange(party: mpc.Party, numel: int, repeats: int) -> tuple[float, int, int]:
    """Time ``repeats`` resharing steps of an int64 tensor; one untimed warm-up first."""
    comm = party.comm
    tensor = torch.randint(-(2**62), 2**62, (numel,), dtype=torch.int64)
    comm.send_prev_recv_next(tensor)
    before = comm.stats.total()
    start = time.perf_counter()
    for _ in range(repeats):
        received = comm.send_prev_recv_next(tensor)
    seconds = time.perf_counter() - start
    assert received.shape == tensor.shape
    after = comm.stats.total()
    return seconds, after.bytes_sent - before.bytes_sent, after.messages_sent - before.messages_sent


def ping_pong(party: mpc.Party, repeats: int) -> float:
    """Median round trip of one int64 between parties 0 and 1 (party 2 idles): the latency
    floor of every protocol round on this transport."""
    comm = party.comm
    token = torch.zeros(1, dtype=torch.int64)
    times = []
    for _ in range(repeats + 10):  # the first 10 warm up
        if party.rank == 0:
            start = time.perf_counter()
            comm.send(1, token)
            comm.recv(1)
            times.append(time.perf_counter() - start)
        elif party.rank == 1:
            comm.send(0, comm.recv(0))
    return sorted(times[10:])[len(times[10:]) // 2] if times else 0.0


def report_rtt(mode: str, results: list[float]) -> None:
    print(f"{mode:<22} round trip of one int64, median: {results[0] * 1e3:.3f} ms")


def report(mode: str, numel: int, results: list[tuple[float, int, int]]) -> None:
    seconds = max(r[0] for r in results)  # the step is as slow as its slowest party
    sent, messages = results[0][1], results[0][2]
    print(
        f"{mode:<22} {numel * 8 / MB:>9.1f} {sent / MB / seconds:>10.1f} "
        f"{sent:>14,d} {messages:>9d} {seconds:>9.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--insecure", action="store_true", help="also measure plaintext gRPC")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    sizes = [128 * 3072, 4 * 1024 * 1024] + ([] if args.quick else [32 * 1024 * 1024])
    repeats = args.repeats or (3 if args.quick else 5)

    print(
        f"{'transport':<22} {'tensor MB':>9} {'MB/s/party':>10} {'bytes sent':>14} "
        f"{'messages':>9} {'seconds':>9}"
    )
    report_rtt("memory", mpc.simulate(ping_pong, 200))
    for numel in sizes:
        report("memory", numel, mpc.simulate(exchange, numel, repeats))
    variants = [("mTLS", False)] + ([("plaintext", True)] if args.insecure else [])
    for label, insecure in variants:
        with GrpcThreads(insecure=insecure, timeout=600) as cluster:
            report_rtt(f"grpc-threads {label}", cluster.run(ping_pong, 200))
            for numel in sizes:
                report(f"grpc-threads {label}", numel, cluster.run(exchange, numel, repeats))
        with GrpcCluster(insecure=insecure, timeout=600) as cluster:
            report_rtt(f"grpc-procs {label}", cluster.run(ping_pong, 200))
            for numel in sizes:
                report(f"grpc-procs {label}", numel, cluster.run(exchange, numel, repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
