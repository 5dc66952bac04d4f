"""Benchmark of the nonlinear protocols (protocols/approx) at BERT-base shapes.

    python -m benchmarks.nonlinear            # the shapes of issue 3
    python -m benchmarks.nonlinear --quick    # smaller shapes, a few seconds

Prints, per protocol: wall time (three parties in one process, 2 CPU cores here), bytes
sent by the busiest party, its rounds (send steps, as SPU counts them), the error against
exact torch, and SecretFlow-SPU's PUMA figures for party 0 on the same shapes where
issue 3 gives them.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from benchmarks.harness import HEADER, measure
from veil.protocols.approx.argmax import argmax
from veil.protocols.approx.embedding import embedding
from veil.protocols.approx.gelu import gelu
from veil.protocols.approx.layernorm import layernorm
from veil.protocols.approx.softmax import softmax

SPU_PARTY0 = {  # (MB sent, send steps), SecretFlow-SPU PUMA, from issue 3
    "gelu 128x768": (30.7, 55),
    "softmax 12x128x128": (47.0, 160),
    "layernorm 128x768": (3.2, 55),
}


def _cases(quick: bool) -> list[tuple[str, dict, object, object, dict]]:
    gen = torch.Generator().manual_seed(0)  # benchmark inputs only
    seq, hidden, heads = (32, 256, 2) if quick else (128, 768, 12)
    vocab, lm_vocab, tokens = (2000, 4096, 8) if quick else (30522, 49152, 128)
    gelu_wide = torch.randn(seq, 4 * hidden, generator=gen, dtype=torch.float64) * 3
    gelu_narrow = torch.randn(seq, hidden, generator=gen, dtype=torch.float64) * 3
    logits = torch.randn(heads, seq, seq, generator=gen, dtype=torch.float64) * 3
    causal = torch.tril(torch.ones(seq, seq, dtype=torch.bool))
    scale = torch.pow(10.0, torch.rand(seq, 1, generator=gen, dtype=torch.float64) * 4 - 2)
    rows = torch.randn(seq, hidden, generator=gen, dtype=torch.float64) * scale
    gamma = 1 + 0.1 * torch.randn(hidden, generator=gen, dtype=torch.float64)
    beta = 0.1 * torch.randn(hidden, generator=gen, dtype=torch.float64)
    table = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, vocab, (tokens,), generator=gen)
    scores = torch.randn(1, lm_vocab, generator=gen, dtype=torch.float64) * 3

    def argmax_index(x):
        return argmax(x)[1]

    return [
        (f"gelu {seq}x{4 * hidden}", {"x": gelu_wide}, gelu, F.gelu, {}),
        (f"gelu {seq}x{hidden}", {"x": gelu_narrow}, gelu, F.gelu, {}),
        (f"gelu {seq}x{hidden} puma", {"x": gelu_narrow}, lambda x: gelu(x, "puma"), F.gelu, {}),
        (
            f"softmax {heads}x{seq}x{seq}",
            {"x": logits},
            softmax,
            lambda x: torch.softmax(x, -1),
            {},
        ),
        (
            f"softmax {heads}x{seq}x{seq} causal",
            {"x": logits},
            lambda x: softmax(x, causal),
            lambda x: torch.softmax(x.masked_fill(~causal, -math.inf), -1),
            {},
        ),
        (
            f"softmax {heads}x{seq}x{seq} no clip (t=5, x-max >= -50)",
            {"x": logits},
            lambda x: softmax(x, squarings=5, base="quadratic", clip=None),
            lambda x: torch.softmax(x, -1),
            {},
        ),
        (
            f"softmax {heads}x{seq}x{seq} no clip (t=6, x-max >= -120)",
            {"x": logits},
            lambda x: softmax(x, squarings=6, base="quadratic", clip=None),
            lambda x: torch.softmax(x, -1),
            {},
        ),
        (
            f"layernorm {seq}x{hidden}",
            {"x": rows, "w": gamma, "b": beta},
            lambda x, w, b: layernorm(x, w, b),
            lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
            {"w": 1, "b": 1},
        ),
        (
            f"layernorm {seq}x{hidden} bits bracket",
            {"x": rows, "w": gamma, "b": beta},
            lambda x, w, b: layernorm(x, w, b, bracket="bits"),
            lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
            {"w": 1, "b": 1},
        ),
        (
            f"layernorm {seq}x{hidden} no affine",
            {"x": rows},
            lambda x: layernorm(x, None, None),
            lambda x: F.layer_norm(x, (x.shape[-1],)),
            {},
        ),
        (
            f"embedding {tokens} of {vocab}x{hidden}",
            {"ids": ids, "table": table},
            embedding,
            lambda ids, table: table[ids],
            {"table": 1},
        ),
        (f"argmax over {lm_vocab}", {"x": scores}, argmax_index, lambda x: x.argmax(-1), {}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args(argv)
    results = []
    for name, inputs, private_op, plain_op, owners in _cases(args.quick):
        if args.only in name:
            results.append(measure(name, inputs, private_op, plain_op, owners))
            print(results[-1].row(), flush=True)
    print()
    print(HEADER)
    for m in results:
        print(m.row())
    print("\n| op | Veil MB / critical-path rounds / send steps | SPU PUMA party 0 MB / send steps |\n"
          "|---|---|---|")
    for m in results:
        if m.name in SPU_PARTY0:
            spu_mb, spu_steps = SPU_PARTY0[m.name]
            print(f"| {m.name} | {m.bytes_sent / 1e6:.1f} / {m.depth} / {m.rounds} | {spu_mb} / {spu_steps} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
