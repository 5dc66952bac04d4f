"""Per-protocol benchmark at transformer shapes (three parties in one process).

    python -m benchmarks.ops

Prints wall time, bytes sent by the busiest party, rounds, the plaintext torch time
and the error against plaintext, with LAN/WAN estimates (see benchmarks/harness.py).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.harness import HEADER, measure
from veil.protocols.truncation import truncate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=768)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(0)  # benchmark inputs only
    s, h = args.seq, args.hidden
    x = torch.randn(s, h, generator=gen, dtype=torch.float64)
    w = torch.randn(h, h, generator=gen, dtype=torch.float64) / h**0.5
    a = torch.randn(s, 4 * h, generator=gen, dtype=torch.float64) * 3
    b = torch.randn(s, 4 * h, generator=gen, dtype=torch.float64) * 3

    def truncation_only(a):
        scaled = a * (1 << 18)  # exact integer product: a with 2f fractional bits
        scaled.frac_bits = 36
        return truncate(scaled, 18)

    rows = [
        measure(f"matmul {s}x{h} @ {h}x{h} (both secret)", {"x": x, "w": w}, lambda x, w: x @ w,
                lambda x, w: x @ w),
        measure(f"mul {s}x{4 * h}", {"a": a, "b": b}, lambda a, b: a * b, lambda a, b: a * b),
        measure(f"truncation {s}x{4 * h}", {"a": a}, truncation_only, lambda a: a),
        measure(f"less_than {s}x{4 * h}", {"a": a, "b": b}, lambda a, b: a < b, lambda a, b: (a < b).double()),
        measure(f"relu {s}x{4 * h}", {"a": a}, lambda a: a.relu(), torch.relu),
        measure(f"equal {s}x{4 * h}", {"a": a, "b": b}, lambda a, b: a.eq(b), lambda a, b: (a == b).double()),
        measure(f"max over last dim {s}x{4 * h}", {"a": a}, lambda a: a.max(-1), lambda a: a.max(-1).values),
    ]
    print(HEADER)
    for row in rows:
        print(row.row())
    print(f"\npeak RSS {max(r.peak_rss_mb for r in rows):.0f} MB; torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
