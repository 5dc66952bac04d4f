"""The exact ring GEMM kernels on this machine's CPU, at the models' shapes.

    python -m benchmarks.ring_gemm            # the shapes below, 3 timed runs each
    python -m benchmarks.ring_gemm --runs 1   # quicker

For each product a @ b of full-range int64 operands it prints the seconds of every CPU
candidate of :data:`veil.mpc.ring_matmul.CPU_CHOOSER` (torch's int64 GEMM and the wide
float64 limbs; the fastest of ``--runs`` after a warm-up), which one ``ring_matmul`` kept
and what its first call cost (the measurement included), and checks that every kernel gives
the same ring elements.  torch's int64 GEMM is vectorised only with AVX-512, so which kernel
wins depends on the CPU: the header prints its flags.
"""

from __future__ import annotations

import argparse
import time

import torch

import veil.mpc.ring_matmul as rm
from veil.mpc.kernel_choice import shape_class

SHAPES = {
    "BERT QKV (128 x 768 @ 768 x 2304)": ((128, 768), (768, 2304)),
    "BERT up (128 x 768 @ 768 x 3072)": ((128, 768), (768, 3072)),
    "BERT down (128 x 3072 @ 3072 x 768)": ((128, 3072), (3072, 768)),
    "BERT scores (12 x 128 x 64 @ 12 x 64 x 128)": ((12, 128, 64), (12, 64, 128)),
    "BERT one-hot lookup (128 x 30522 @ 30522 x 768)": ((128, 30522), (30522, 768)),
    "GPT-2 one-hot lookup (32 x 50257 @ 50257 x 768)": ((32, 50257), (50257, 768)),
    "GPT-2 fc1 (32 x 768 @ 768 x 3072)": ((32, 768), (768, 3072)),
    "SmolLM2 decode gate/up (1 x 576 @ 576 x 3072)": ((1, 576), (576, 3072)),
    "SmolLM2 decode head (1 x 576 @ 576 x 49152)": ((1, 576), (576, 49152)),
}


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return ", ".join(sorted(f for f in flags if f.startswith("avx")))
    except OSError:
        pass
    return "unknown"


def _fastest(kernel, a: torch.Tensor, b: torch.Tensor, runs: int) -> tuple[float, torch.Tensor]:
    out = kernel(a, b)
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        out = kernel(a, b)
        best = min(best, time.perf_counter() - start)
    return best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per kernel (fastest kept)")
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)  # benchmark operands only
    names = list(rm.CPU_CHOOSER.kernels)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU flags: {_cpu_flags()}\n")
    print("| product | " + " | ".join(f"{n} s" for n in names) + " | kept | first call s | exact |")
    print("|---|" + "---|" * (len(names) + 3))
    for label, (a_shape, b_shape) in SHAPES.items():
        a = torch.randint(-(2**63), 2**63 - 1, a_shape, generator=gen, dtype=torch.int64)
        b = torch.randint(-(2**63), 2**63 - 1, b_shape, generator=gen, dtype=torch.int64)
        start = time.perf_counter()
        chosen = rm.ring_matmul(a, b)
        first = time.perf_counter() - start
        kept = rm.CPU_CHOOSER.choices[shape_class(a, b)].name
        timings, outputs = zip(*(_fastest(rm.CPU_CHOOSER.kernels[n], a, b, args.runs) for n in names))
        exact = all(torch.equal(out, chosen) for out in outputs)
        print(f"| {label} | " + " | ".join(f"{t:.3f}" for t in timings)
              + f" | {kept} | {first:.3f} | {exact} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
