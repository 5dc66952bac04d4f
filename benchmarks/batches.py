"""Decoder batches: cost per sequence at batch 1, 4 and 8, and the dry-run estimate beside it.

    python -m benchmarks.batches                      # GPT-2 base (seeded) and SmolLM2-135M
    python -m benchmarks.batches --models gpt2 --seq 16 --new-tokens 2 --batches 1,4,8

Each batch holds prompts of different lengths (between half of ``--seq`` and ``--seq``
tokens), left padded under the public attention mask (:mod:`veil.nn.padding`), so that one
pass over the weight shares serves the whole batch.  Per batch it prints the wall time, the
bytes the busiest party sends and the critical-path rounds, each also per sequence, and the
estimate of :func:`veil.nn.estimate.estimate` for the same shapes (its dry-run time, and
whether its bytes and rounds equal the measured ones).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from veil.nn.estimate import estimate
from veil.nn.padding import left_pad
from veil.nn.private import PrivateModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load(name: str):
    """GPT-2 base with seeded weights, or the bundled SmolLM2-135M-Instruct."""
    if name == "smollm2":
        from veil.nn.demo import load_smollm2

        return load_smollm2()[0]
    import transformers

    torch.manual_seed(0)  # weights only; protocol randomness is AES-CTR
    return transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()


def prompts(batch: int, seq: int, vocab: int) -> list[list[int]]:
    """``batch`` prompts whose lengths spread from ``seq`` down to about ``seq / 2``."""
    generator = torch.Generator().manual_seed(batch)
    lengths = [seq - (row * (seq // 2)) // max(batch - 1, 1) for row in range(batch)]
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def bench(name: str, seq: int, new_tokens: int, batches: list[int]) -> None:
    hf = load(name)
    private = PrivateModel.from_hf(hf)
    print(f"\n## {name}: prompts of {seq // 2}..{seq} tokens (left padded to {seq}), "
          f"{new_tokens} new tokens")
    print("| batch | wall s | s / seq | MB sent / party | MB / seq | critical-path rounds "
          "| rounds / seq | estimate = measured | dry run s |\n|---|---|---|---|---|---|---|---|---|")
    for batch in batches:
        ids, mask = left_pad(prompts(batch, seq, hf.config.vocab_size))
        start = time.perf_counter()
        result = private.generate(ids, new_tokens, attention_mask=mask)
        wall = time.perf_counter() - start
        est = estimate(hf, seq=seq, new_tokens=new_tokens, batch=batch)
        sent = result.max_bytes_sent
        same = est.max_bytes_sent == sent and est.depth == result.depth
        print(f"| {batch} | {wall:.1f} | {wall / batch:.1f} | {sent / 1e6:.1f} | "
              f"{sent / batch / 1e6:.1f} | {result.depth} | {result.depth / batch:.0f} | "
              f"{'yes' if same else f'no: {est.max_bytes_sent} B, {est.depth} rounds'} | "
              f"{est.dry_run_s:.1f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gpt2,smollm2")
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=2)
    parser.add_argument("--batches", default="1,4,8")
    args = parser.parse_args(argv)
    print(f"load: {os.getloadavg()[0]:.1f} (1-minute average, {os.cpu_count()} cores)")
    for name in args.models.split(","):
        bench(name, args.seq, args.new_tokens, [int(b) for b in args.batches.split(",")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
