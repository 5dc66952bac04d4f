"""End-to-end private inference benchmarks (three parties in one process).

    python -m benchmarks.models bert       # BERT-base, seq 128, seeded random weights
    python -m benchmarks.models gpt2       # GPT-2 base, 32 tokens in, 1 out
    python -m benchmarks.models smollm2    # SmolLM2-135M: 32-token text prompt + 8 generated
    python -m benchmarks.models gemma3     # Gemma-3-270M: 16-token chat prompt + 4 generated
    python -m benchmarks.models bert --layers 2 --seq 32   # smaller, for a quick look
    python -m benchmarks.models decode     # GPT-2 base: seconds per new token vs prompt length
    python -m benchmarks.models llama7b    # LLaMA-7B, weight shares streamed (benchmarks/llama7b.py)

``--plot`` also writes PNG plots (matplotlib, the ``bench`` extra) into benchmarks/plots/:
where time, bytes and rounds go by protocol, per-token decode time against prompt length,
and the run's headline figures for ``python -m benchmarks.plots`` (Veil beside SPU).

Each run also times the plaintext float model in the same process and prints the ratio,
since absolute times drift on shared machines; bytes and rounds are per party from the
communicator counters; rounds are critical-path rounds (the logical clock on every message)
beside send steps (SPU's count); the network model adds critical-path rounds x RTT + bytes /
bandwidth.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

from benchmarks import plots
from benchmarks.harness import NETWORKS, network_estimate
from veil.nn.backend import ApproxBackend
from veil.nn.private import PrivateModel, PrivateResult, import_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def timed(fn, repeats: int = 5):
    """Fastest of ``repeats`` runs after a warm-up: the least disturbed by other load."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def report(name: str, plain_s: float, share_s: float, result: PrivateResult, error_lines: list[str],
           layers_per_pass: int, plot_as: str | None = None) -> None:
    print(f"\n## {name}")
    print(f"plaintext float model: {plain_s:.3f} s")
    print(f"sharing the weights (once per session): {share_s:.1f} s")
    print(f"private inference: {result.wall_s:.1f} s  ({result.wall_s / plain_s:.0f}x plaintext)")
    for i, r in enumerate(result.reports):
        print(f"  party {i}: sent {r.traffic.bytes_sent / 1e9:.3f} GB, received "
              f"{r.traffic.bytes_received / 1e9:.3f} GB, {r.traffic.depth} critical-path rounds, "
              f"{r.traffic.rounds} send steps")
    for net, (bandwidth, rtt) in NETWORKS.items():
        est = network_estimate(result.wall_s, result.depth, result.max_bytes_sent, net)
        print(f"  {net} estimate ({bandwidth / 1e9:g} Gbps, {rtt * 1e3:g} ms RTT): {est:.1f} s")
    print(f"peak memory (process RSS): {peak_rss_gb():.2f} GB")
    for line in error_lines:
        print(line)
    print("\nwhere time and bytes go (party 0, by protocol; time includes local work inside it):")
    print("| protocol | calls | seconds | MB sent | critical-path rounds | send steps |\n"
          "|---|---|---|---|---|---|")
    rows = sorted(result.reports[0].by_protocol.items(), key=lambda kv: -kv[1].seconds)
    for proto, t in rows:
        print(f"| {proto} | {t.calls} | {t.seconds:.2f} | {t.bytes_sent / 1e6:.1f} | {t.depth} | "
              f"{t.rounds} |")
    accounted = sum(t.seconds for _, t in rows)
    print(f"| (outside protocols: local adds, reshapes, model code) | | "
          f"{result.reports[0].wall_s - accounted:.2f} | | | |")
    print_layers(result, layers_per_pass)
    if plot_as is not None:
        plots.protocol_breakdown(result.reports[0].by_protocol, f"{name} (party 0)",
                                 plots.PLOT_DIR / f"{plot_as}_protocols.png")
        plots.Headline(plot_as, result.wall_s, result.max_bytes_sent, result.depth,
                       peak_rss_gb()).save()


def pass_seconds(result: PrivateResult, layers_per_pass: int) -> list[float]:
    """Party 0's seconds per pass over the layers (pass 0 is the prompt, then one per token)."""
    steps = result.layers
    return [sum(c[0] for c in steps[p:p + layers_per_pass]) for p in range(0, len(steps), layers_per_pass)]


def print_layers(result: PrivateResult, layers_per_pass: int) -> None:
    """Per-layer seconds, MB and rounds at party 0; per pass (prompt, each new token) if several."""
    steps = result.layers
    if not steps:
        return
    if len(steps) <= layers_per_pass:
        print("\nper layer (party 0; layer 0 includes the embedding lookup):\n"
              "| layer | seconds | MB sent | critical-path rounds | send steps |\n|---|---|---|---|---|")
        for i, (sec, sent, rounds, depth) in enumerate(steps):
            print(f"| {i} | {sec:.2f} | {sent / 1e6:.1f} | {depth} | {rounds} |")
        return
    print("\nper pass over the layers (party 0; pass 0 is the prompt):")
    print("| pass | seconds | MB sent | critical-path rounds | send steps | slowest layer s |\n"
          "|---|---|---|---|---|---|")
    for p in range(0, len(steps), layers_per_pass):
        chunk = steps[p:p + layers_per_pass]
        print(f"| {p // layers_per_pass} | {sum(c[0] for c in chunk):.2f} | "
              f"{sum(c[1] for c in chunk) / 1e6:.1f} | {sum(c[3] for c in chunk)} | {sum(c[2] for c in chunk)} | "
              f"{max(c[0] for c in chunk):.2f} |")


@torch.no_grad()
def bench_bert(args) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)  # model weights and inputs only; protocol randomness is AES-CTR
    config = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden)
    hf = BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(0, config.vocab_size, (1, args.seq))
    mask = torch.ones_like(ids)
    plain_s, expected = timed(lambda: hf(input_ids=ids, attention_mask=mask).last_hidden_state)
    start = time.perf_counter()
    pm = PrivateModel.from_hf(hf, device=args.device)
    share_s = time.perf_counter() - start
    result = pm.logits(ids, attention_mask=mask)
    err = (result.output - expected.double()).abs()
    twin = import_hf(hf)(ApproxBackend.puma(), ids, mask).double()
    report(f"BERT-base-like: {args.layers} layers, hidden {args.hidden}, seq {args.seq}", plain_s, share_s,
           result, [f"max abs error of the last hidden state vs plaintext: {err.max():.3e} (mean {err.mean():.3e})",
                    (f"  of which approximation (float twins vs plaintext): {(twin - expected).abs().max():.3e}; "
                    f"protocol (private vs twins): {(result.output - twin).abs().max():.3e}")], args.layers,
           "bert" if args.plot else None)


@torch.no_grad()
def bench_gpt2(args) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.hidden, n_head=args.hidden // 64)
    hf = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, args.seq))
    plain_s, expected = timed(lambda: hf(input_ids=ids).logits[:, -1])
    start = time.perf_counter()
    pm = PrivateModel.from_hf(hf, device=args.device)
    share_s = time.perf_counter() - start
    result = pm.generate(ids, max_new_tokens=1)
    same = int(result.output[0, 0]) == int(expected.argmax(-1)[0])
    report(f"GPT-2-like: {args.layers} layers, hidden {args.hidden}, {args.seq} tokens in, 1 out", plain_s,
           share_s, result, [f"next token equals plaintext argmax: {same}"], args.layers,
           "gpt2" if args.plot else None)


SMOLLM2_TEXT = (
    "The printing press was invented by Johannes Gutenberg around 1440 in Mainz, Germany. "
    "It made books cheaper and faster to produce, and within a few decades printing shops "
    "had spread across Europe, which"
)


@torch.no_grad()
def bench_smollm2(args) -> None:
    from veil.nn.demo import load_smollm2

    hf, tokenizer = load_smollm2()
    ids = tokenizer(SMOLLM2_TEXT, return_tensors="pt")["input_ids"][:, : args.seq]
    bench_generation(args, "SmolLM2-135M", "smollm2", hf, tokenizer, ids)


@torch.no_grad()
def bench_gemma3(args) -> None:
    """Gemma-3-270M on a chat prompt: its 262,144-entry vocabulary makes the LM head, the
    secret argmax and the one-hot embedding of each new token the large part."""
    from veil.nn.demo import DEFAULT_PROMPT, chat_ids, load_gemma3

    hf, tokenizer = load_gemma3()
    bench_generation(args, "Gemma-3-270M", "gemma3", hf, tokenizer, chat_ids(tokenizer, DEFAULT_PROMPT))


def bench_generation(args, title: str, plot_as: str, hf, tokenizer, ids: torch.Tensor) -> None:
    """Private greedy generation of ``args.new_tokens`` after ``ids``, beside plaintext."""
    new = args.new_tokens
    plain_s, expected = timed(lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                                  do_sample=False)[0, ids.shape[1]:], repeats=2)
    start = time.perf_counter()
    pm = PrivateModel.from_hf(hf, device=args.device)
    share_s = time.perf_counter() - start
    result = pm.generate(ids, max_new_tokens=new)
    ours = result.output[0].tolist()
    report(f"{title}: {ids.shape[1]}-token prompt + {new} generated", plain_s, share_s, result,
           [f"generated ids equal plaintext greedy: {ours == expected.tolist()} ({ours} vs {expected.tolist()})",
            f"continuation: {tokenizer.decode(ours)!r}"], hf.config.num_hidden_layers,
           plot_as if args.plot else None)


@torch.no_grad()
def bench_decode(args) -> None:
    """GPT-2 (seeded, ``--layers``/``--hidden``) generating ``--new-tokens`` after prompts of
    each ``--prompt-lengths``: with the KV cache a new token should cost about the same
    whatever the prompt length, while the prompt pass grows with it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_embd=args.hidden, n_head=args.hidden // 64)
    pm = PrivateModel.from_hf(GPT2LMHeadModel(config).eval(), device=args.device)
    lengths = [int(n) for n in args.prompt_lengths.split(",")]
    new = max(args.new_tokens, 2)
    print(f"\n## GPT-2-like decoding: {args.layers} layers, hidden {args.hidden}, {new} new tokens")
    print("| prompt tokens | prompt pass s | s per new token | critical-path rounds per new token |\n"
          "|---|---|---|---|")
    per_token, prompt = [], []
    for n in lengths:
        ids = torch.randint(0, config.vocab_size, (1, n))
        result = pm.generate(ids, max_new_tokens=new)
        passes = pass_seconds(result, args.layers)
        rounds = [sum(c[3] for c in result.layers[p:p + args.layers])
                  for p in range(args.layers, len(result.layers), args.layers)]
        prompt.append(passes[0])
        per_token.append(sum(passes[1:]) / len(passes[1:]))
        print(f"| {n} | {passes[0]:.2f} | {per_token[-1]:.2f} | {sum(rounds) / len(rounds):.0f} |")
    if args.plot:
        plots.decode_time_vs_prompt(lengths, per_token, prompt,
                                    f"GPT-2-like ({args.layers} layers, hidden {args.hidden}), party 0",
                                    plots.PLOT_DIR / "decode_per_token.png")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["llama7b"]:  # its own options (streamed weights, modes)
        from benchmarks.llama7b import main as llama7b

        return llama7b(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["bert", "gpt2", "smollm2", "gemma3", "decode", "llama7b"])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None, help="smollm2: 8; gemma3: 4; decode: 3")
    parser.add_argument("--prompt-lengths", default="8,16,32,64", help="decode: comma-separated")
    parser.add_argument("--device", default="cpu", help="torch device of the shares: cpu, cuda")
    parser.add_argument("--plot", action="store_true", help="also write PNG plots (bench extra)")
    args = parser.parse_args(argv)
    if args.seq is None:
        args.seq = {"bert": 128, "gpt2": 32, "smollm2": 32, "gemma3": 0, "decode": 0}[args.model]
    if args.new_tokens is None:
        args.new_tokens = {"decode": 3, "gemma3": 4}.get(args.model, 8)
    print(f"torch threads: {torch.get_num_threads()}")
    benches = {"bert": bench_bert, "gpt2": bench_gpt2, "smollm2": bench_smollm2, "gemma3": bench_gemma3,
               "decode": bench_decode}
    benches[args.model](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
