"""The round-trip floor of the party link's design: bare gRPC, no Veil code on the path.

    python -m benchmarks.grpc_floor              # 3 runs of 1,000 ping-pongs
    python -m benchmarks.grpc_floor --runs 5 --repeats 2000

Two processes on loopback, each a sync gRPC server and one long-lived client stream to the
other (``stream_unary`` fed from a queue by gRPC's sender thread, the handler putting what it
receives on a queue), exactly the shape of :mod:`veil.parties.grpc_comm` but with 40-byte
``bytes`` messages, no TLS, no protobuf, no chunking or validation.  Process 0 times
send -> receive of the reply; process 1 echoes.  The median is a lower bound for the party
link's round trip of one small tensor (``python -m benchmarks.grpc_vs_memory``): what
remains is gRPC's thread hand-offs (caller -> sender thread, completion queue -> handler
thread -> caller) on each side, and the scheduler's wake-ups on this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

MESSAGE = b"x" * 40
WARM_UP = 10


def peer(rank: int, ports: list[int], repeats: int) -> None:
    """One side: serve a stream into ``inbox``, stream ``outbox`` to the other side."""
    import grpc

    inbox: queue.SimpleQueue = queue.SimpleQueue()
    outbox: queue.SimpleQueue = queue.SimpleQueue()

    def stream(requests, context):
        for message in requests:
            inbox.put(message)
        return b""

    handler = grpc.stream_unary_rpc_method_handler(stream)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor", {"S": handler}),))
    server.add_insecure_port(f"127.0.0.1:{ports[rank]}")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{ports[1 - rank]}")
    grpc.channel_ready_future(channel).result(timeout=30)

    def requests():
        while (message := outbox.get()) is not None:
            yield message

    call = channel.stream_unary("/floor/S").future(requests(), wait_for_ready=True)
    times = []
    for _ in range(repeats + WARM_UP):
        if rank == 0:
            start = time.perf_counter()
            outbox.put(MESSAGE)
            inbox.get(timeout=30)
            times.append(time.perf_counter() - start)
        else:
            outbox.put(inbox.get(timeout=30))
    outbox.put(None)
    if rank == 0:
        times = sorted(times[WARM_UP:])
        quantiles = [times[int(q * (len(times) - 1))] * 1e3 for q in (0.1, 0.5, 0.9)]
        print(" ".join(f"{t:.3f}" for t in quantiles), flush=True)
    with contextlib.suppress(grpc.RpcError, grpc.FutureTimeoutError):
        call.result(timeout=5)  # the other side may stop its server first; the numbers are in
    server.stop(grace=1).wait()
    channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1000, help="timed round trips per run")
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank is not None:
        peer(args.rank, [int(p) for p in args.ports.split(",")], args.repeats)
        return 0
    from benchmarks.grpc_e2e import _free_ports  # here: the echoing children need no torch

    print("| run | round trip p10 ms | median ms | p90 ms |\n|---|---|---|---|")
    for run in range(args.runs):
        ports = ",".join(map(str, _free_ports(2)))
        command = [sys.executable, "-m", "benchmarks.grpc_floor", "--ports", ports,
                   "--repeats", str(args.repeats)]
        echo = subprocess.Popen([*command, "--rank", "1"], stderr=subprocess.DEVNULL)
        try:
            timed = subprocess.run([*command, "--rank", "0"], capture_output=True, text=True,
                                   timeout=120, check=True)
        finally:
            echo.wait(timeout=30)
        p10, median, p90 = timed.stdout.split()
        print(f"| {run + 1} | {p10} | {median} | {p90} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
