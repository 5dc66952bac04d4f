"""``veil estimate``: a request's bytes per party, rounds and network time, before running it.

Prints the dry run's counters (:func:`veil.nn.estimate.estimate`) with the time on PUMA's
LAN (1 ms, 5 Gbit/s) and a WAN (40 ms, 100 Mbit/s), and on the network given by
``--rtt-ms`` / ``--bandwidth`` when either is set.  Only argparse is imported until the
command runs, so that building the ``veil`` parser stays cheap.
"""

from __future__ import annotations

import argparse
import os

MODELS = ("minilm", "smollm2", "gpt2", "bert")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=MODELS, help="the model to price")
    parser.add_argument("--seq", type=int, default=32, help="prompt / sentence length in tokens")
    parser.add_argument(
        "--new-tokens", type=int, default=0, help="tokens to generate (decoders; 0: logits only)"
    )
    parser.add_argument("--batch", type=int, default=1, help="sequences per request")
    parser.add_argument("--rtt-ms", type=float, help="round-trip time of another network (ms)")
    parser.add_argument("--bandwidth", type=float, help="that network's bandwidth (Mbit/s)")


def run(args: argparse.Namespace) -> int:
    from veil.nn.estimate import LAN, WAN, Network, estimate

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
