"""``veil estimate``: a request's bytes per party, rounds and network time, before running it.

    veil estimate --model smollm2 --seq 32 --new-tokens 8
    veil estimate --model bert --seq 128 --rtt-ms 10 --bandwidth 1000

Prints the shape-only dry run's counters (:func:`veil.nn.estimate.estimate`) with the time
on PUMA's LAN (1 ms, 5 Gbit/s) and a WAN (40 ms, 100 Mbit/s), and on the network given by
``--rtt-ms`` / ``--bandwidth`` when either is set.
"""

from __future__ import annotations

import argparse
import os

from veil.nn.estimate import LAN, WAN, Network, estimate

MODELS = ("minilm", "smollm2", "gpt2", "bert")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="veil estimate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--seq", type=int, default=32, help="prompt / sentence length in tokens")
    p.add_argument(
        "--new-tokens", type=int, default=0, help="tokens to generate (decoders; 0: logits only)"
    )
    p.add_argument("--batch", type=int, default=1, help="sequences per request")
    p.add_argument("--rtt-ms", type=float, help="round-trip time of another network (ms)")
    p.add_argument("--bandwidth", type=float, help="its bandwidth (Mbit/s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    networks = [LAN, WAN]
    if args.rtt_ms is not None or args.bandwidth is not None:
        rtt_s = LAN.rtt_s if args.rtt_ms is None else args.rtt_ms / 1e3
        bits = LAN.bits_per_s if args.bandwidth is None else args.bandwidth * 1e6
        networks.append(Network("given", rtt_s, bits))
    try:
        result = estimate(args.model, seq=args.seq, new_tokens=args.new_tokens, batch=args.batch)
    except ValueError as exc:
        print(f"veil estimate: {exc}")
        return 2
    print(result.summary(tuple(networks)))
    return 0
