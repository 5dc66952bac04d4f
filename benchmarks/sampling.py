"""The cost of choosing one token: greedy argmax against secure sampling.

    python -m benchmarks.sampling            # SmolLM2's vocabulary (49,152), one row
    python -m benchmarks.sampling --vocab 4096

Each case runs the selection alone on one row of secret logits in the three-party simulation
and prints the wall time (slowest party), bytes sent by the busiest party, critical-path
rounds and the LAN/WAN estimate (benchmarks/harness.py).  Sampling draws its uniform value
jointly (protocols/approx/sampling.py); temperature, top-k and top-p follow transformers'
``generate``.  A generated token pays this once per step on top of the model's layers.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.harness import NETWORKS, network_estimate
from veil import mpc
from veil.protocols.approx.argmax import argmax
from veil.protocols.approx.sampling import sample

CASES = {
    "greedy argmax": lambda x: argmax(x),
    "sample T=1": lambda x: sample(x),
    "sample T=0.7": lambda x: sample(x, temperature=0.7),
    "sample T=0.7, top_k=5": lambda x: sample(x, temperature=0.7, top_k=5),
    "sample T=0.7, top_p=0.9": lambda x: sample(x, temperature=0.7, top_p=0.9),
}


def measure_case(select, logits: torch.Tensor) -> tuple[float, int, int]:
    """(wall s of the slowest party, bytes sent by the busiest party, critical-path rounds)."""

    def fn(party: mpc.Party):
        x = mpc.share(party, logits, 0)
        x.reveal()  # level clocks: the measured part starts together
        with party.comm.scope("measured"):
            start = time.perf_counter()
            select(x)
            wall = time.perf_counter() - start
        traffic = party.comm.stats.total("measured")
        return wall, traffic.bytes_sent, traffic.depth

    results = mpc.simulate(fn)
    return max(r[0] for r in results), max(r[1] for r in results), max(r[2] for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=49152, help="logits per row (default: SmolLM2's)")
    args = parser.parse_args(argv)
    if args.vocab < 2:
        parser.error(f"--vocab must be at least 2, got {args.vocab}")
    logits = torch.randn(1, args.vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    print(f"torch threads: {torch.get_num_threads()}, vocabulary {args.vocab}, one row\n")
    print("| selection | wall s | MB sent / party | critical-path rounds | LAN est. s | WAN est. s |")
    print("|---|---|---|---|---|---|")
    for name, select in CASES.items():
        wall, sent, depth = measure_case(select, logits)
        estimates = [network_estimate(wall, depth, sent, net) for net in NETWORKS]
        print(f"| {name} | {wall:.3f} | {sent / 1e6:.2f} | {depth} | {estimates[0]:.3f} | {estimates[1]:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
