"""Shares on a GPU: bit-exactness against the CPU, then the end-to-end models on both.

    python -m benchmarks.gpu --device cuda              # the full check (one H200 command)
    python -m benchmarks.gpu --device cpu --short       # the same steps, small, for CI

1. Ring GEMM: every exact kernel (float64 limbs, int8 limbs) and ``ring_matmul``'s choice
   on the device against torch's native int64 matmul on the CPU, with timings.
2. Protocols (mul, truncation, comparison, softmax): the same program run with shares on
   the CPU and on the device; with the PRG keys fixed (below) both runs must give the
   same ring elements at every party.
3. Models: BERT-base seq 128, GPT-2 base (32 tokens in, 1 out) and SmolLM2-135M on the
   device beside the CPU (``--short``: 2-layer models of hidden 128), each pair with its
   time, bytes, critical-path rounds and whether the outputs are identical.

Fixed keys: for the comparison only, every AES key comes from a hash of the party thread's
name and a counter instead of the OS CSPRNG, so the CPU and the device runs draw the same
randomness.  Never for a real run.

The results go to one markdown file (``--out``), rewritten after each step, so a run cut
short by ``--budget-s`` or a timeout still leaves what it measured; a model pair that
would not fit the budget is listed as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import veil.mpc.party as party_module
import veil.mpc.sharing as sharing_module
from veil import mpc
from veil.mpc import prg as prg_module
from veil.mpc import ring_matmul as rm
from veil.mpc.kernel_choice import synchronize
from veil.nn.private import PrivateModel, PrivateResult

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PASS, FAIL = "PASS", "FAIL"


@contextlib.contextmanager
def fixed_keys() -> Iterator[None]:
    """Deterministic AES keys per thread (party0..2, MainThread) for the CPU/device comparison."""
    counters: dict[str, int] = {}
    lock = threading.Lock()

    def key() -> bytes:
        name = threading.current_thread().name
        with lock:
            counters[name] = counters.get(name, 0) + 1
            label = f"{name}/{counters[name]}"
        return hashlib.sha256(label.encode()).digest()[: prg_module.KEY_BYTES]

    modules = [party_module, sharing_module]
    saved = [m.new_key for m in modules]
    for m in modules:
        m.new_key = key
    try:
        yield
    finally:
        for m, original in zip(modules, saved):
            m.new_key = original


class Report:
    """The results file, rewritten whole after every section."""

    def __init__(self, path: Path, device: str, short: bool):
        self.path = path
        self.lines = [
            f"# Veil GPU check ({'short' if short else 'full'}), shares on {device}",
            "",
            (f"- torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
             f"torch threads {torch.get_num_threads()}"),
            f"- device: {torch.cuda.get_device_name(0) if device.startswith('cuda') else 'cpu'}",
            f"- command: python -m benchmarks.gpu --device {device}{' --short' if short else ''}",
            "",
        ]
        self.verdicts: list[tuple[str, str]] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        self.write()

    def verdict(self, name: str, ok: bool) -> str:
        self.verdicts.append((name, PASS if ok else FAIL))
        return PASS if ok else FAIL

    def write(self) -> None:
        failed = [n for n, v in self.verdicts if v == FAIL]
        summary = (f"**exactness: {len(self.verdicts) - len(failed)} of {len(self.verdicts)} checks passed**"
                   + (f"; failed: {', '.join(failed)}" if failed else ""))
        self.path.write_text("\n".join([*self.lines, "", summary, ""]))


def timed_on(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """One warm-up, then one synchronised run."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def full_range(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=gen, dtype=torch.int64)


def check_gemm(report: Report, device: torch.device, short: bool) -> None:
    shapes = [((17, 40), (40, 24)), ((3, 33), (33, 9)), ((2, 4, 16, 8), (2, 4, 8, 16))]
    if not short:
        # BERT-base: a QKV projection, an FFN down-projection, attention scores.
        shapes += [((128, 768), (768, 2304)), ((128, 3072), (3072, 768)), ((12, 128, 64), (12, 64, 128))]
    kernels = {**rm.CUDA_CHOOSER.kernels, "ring_matmul": rm.ring_matmul}
    report.add("## Ring GEMM against native int64 on the CPU", "",
               "| a @ b | " + " | ".join(f"{k} ms" for k in kernels) + " | exact |",
               "|---|" + "---|" * (len(kernels) + 1))
    gen = torch.Generator().manual_seed(0)
    for a_shape, b_shape in shapes:
        a, b = full_range(a_shape, gen), full_range(b_shape, gen)
        expected = torch.matmul(a, b)
        a_dev, b_dev = a.to(device), b.to(device)
        cells, exact = [], True
        for kernel in kernels.values():
            seconds, out = timed_on(device, lambda k=kernel, x=a_dev, y=b_dev: k(x, y))
            exact &= torch.equal(out.cpu(), expected)
            cells.append(f"{seconds * 1e3:.2f}")
        verdict = report.verdict(f"gemm {a_shape}@{b_shape}", exact)
        report.add(f"| {a_shape} @ {b_shape} | " + " | ".join(cells) + f" | {verdict} |")
    report.add("")


def _protocols(party: mpc.Party, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    from veil.protocols.approx.softmax import softmax

    a, b = mpc.share(party, x, owner=0), mpc.share(party, y, owner=1)
    outputs = {
        "mul + truncation": a * b,
        "matmul + truncation": a @ b.transpose(0, 1),
        "comparison": a < b,
        "softmax": softmax(a),
    }
    return {name: share.data.cpu() for name, share in outputs.items()}


def check_protocols(report: Report, device: torch.device, short: bool) -> None:
    rows, cols = (4, 16) if short else (128, 128)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(rows, cols, generator=gen) * 4, torch.randn(rows, cols, generator=gen) * 4
    runs, seconds = {}, {}
    for label, where in (("device", device), ("cpu", torch.device("cpu"))):
        with fixed_keys():
            start = time.perf_counter()
            runs[label] = mpc.simulate(_protocols, x, y, device=where)
            seconds[label] = time.perf_counter() - start
    report.add(f"## Protocols, shares on {device} against the CPU (inputs {rows}x{cols}, fixed keys)", "",
               f"all four on {device}: {seconds['device']:.2f} s (its first use includes its start-up); "
               f"on the CPU: {seconds['cpu']:.2f} s", "",
               "| protocol | ring elements identical at all three parties |", "|---|---|")
    for name in runs["cpu"][0]:
        same = all(torch.equal(runs["cpu"][r][name], runs["device"][r][name]) for r in range(3))
        report.add(f"| {name} | {report.verdict(f'protocol {name}', same)} |")
    report.add("")


@dataclass
class ModelCase:
    name: str
    build: Callable[[], Any]  # the Hugging Face model
    request: Callable[[PrivateModel], PrivateResult]
    estimate_s: float  # a pair's expected seconds on the CPU, for the budget


def _bert(layers: int, hidden: int, seq: int) -> tuple[Callable, Callable]:
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                        intermediate_size=4 * hidden)
    ids = torch.randint(0, config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)  # model weights only; protocol randomness is AES-CTR
    hf = BertModel(config, add_pooling_layer=False).eval()
    return (lambda: hf), (lambda pm: pm.logits(ids, attention_mask=torch.ones_like(ids)))


def _gpt2(layers: int, hidden: int, seq: int) -> tuple[Callable, Callable]:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=layers, n_embd=hidden, n_head=max(hidden // 64, 1))
    ids = torch.randint(0, config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(config).eval()
    return (lambda: hf), (lambda pm: pm.generate(ids, max_new_tokens=1))


def _smollm2(short: bool, new_tokens: int) -> tuple[str, Callable, Callable]:
    """The bundled SmolLM2-135M if installed, else its architecture with seeded weights (the
    98 MB GGUF does not fit what travels to a device machine)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if short:
        config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=512, max_position_embeddings=64)
        label = "LLaMA-like tiny (2 layers, hidden 64, GQA 4/2)"
    else:
        try:
            from veil.nn.demo import load_smollm2

            hf, _ = load_smollm2()
            config, label = hf.config, "SmolLM2-135M (bundled GGUF)"
        except (ImportError, OSError, AttributeError):
            config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                 num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                 rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192)
            hf, label = None, "SmolLM2-135M architecture, seeded random weights (GGUF not installed)"
    seq = 8 if short else 32
    ids = torch.randint(0, config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(4))
    if short or hf is None:
        torch.manual_seed(0)
        hf = LlamaForCausalLM(config).eval()
    return f"{label}: {seq}-token prompt + {new_tokens}", (lambda: hf), (
        lambda pm: pm.generate(ids, max_new_tokens=new_tokens))


def model_cases(short: bool) -> list[ModelCase]:
    if short:
        bert, gpt2 = _bert(2, 128, 16), _gpt2(2, 128, 8)
        names = ("BERT-like tiny (2 layers, hidden 128, seq 16)", "GPT-2-like tiny (2 layers, hidden 128, 8 in, 1 out)")
        smol = _smollm2(True, 2)
        estimates = (10.0, 10.0, 10.0)
    else:
        bert, gpt2 = _bert(12, 768, 128), _gpt2(12, 768, 32)
        names = ("BERT-base, seq 128", "GPT-2 base, 32 tokens in, 1 out")
        smol = _smollm2(False, 8)
        estimates = (60.0, 30.0, 150.0)
    return [
        ModelCase(names[0], *bert, estimates[0]),
        ModelCase(names[1], *gpt2, estimates[1]),
        ModelCase(smol[0], smol[1], smol[2], estimates[2]),
    ]


def _run_model(case: ModelCase, where: tuple[str, str]) -> tuple[PrivateResult, float]:
    device = where[0]
    with fixed_keys():
        start = time.perf_counter()
        pm = PrivateModel.from_hf(case.build(), device=device)
        share_s = time.perf_counter() - start
        return case.request(pm), share_s


def check_models(report: Report, device: torch.device, short: bool, deadline: float) -> None:
    report.add("## Models, shares on the device beside the CPU (fixed keys: outputs must be identical)", "",
               "| model | where | sharing s | inference s | MB sent / party | critical-path rounds "
               "| send steps | output identical |", "|---|---|---|---|---|---|---|---|")
    for case in model_cases(short):
        if time.monotonic() + case.estimate_s > deadline:
            report.add(f"| {case.name} | skipped: under {case.estimate_s:.0f} s of budget left | | | | | | |")
            continue
        runs = {where: _run_model(case, where) for where in ((str(device), "device"), ("cpu", "reference"))}
        outputs = [result.output for result, _ in runs.values()]
        verdict = report.verdict(f"model {case.name}", torch.equal(*outputs))
        for (where, role), (result, share_s) in runs.items():
            report.add(f"| {case.name} | {where} ({role}) | {share_s:.1f} | {result.wall_s:.2f} | "
                       f"{result.max_bytes_sent / 1e6:.1f} | {result.depth} | {result.max_rounds} | {verdict} |")
    report.add("")


def chooser_table(report: Report) -> None:
    if not rm.CUDA_CHOOSER.choices:
        report.add("## Kernel choices", "", "none: ring_matmul used the native int64 GEMM (CPU shares)", "")
        return
    report.add("## Kernel choices made by ring_matmul (per shape class, measured on first use)", "",
               "| device, batch, rows, inner, cols (rounded up to powers of 2) | kept | ms per candidate | failed |",
               "|---|---|---|---|")
    for key, choice in sorted(rm.CUDA_CHOOSER.choices.items(), key=str):
        times = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in choice.seconds.items())
        report.add(f"| {key} | {choice.name} | {times} | {', '.join(choice.failures) or '-'} |")
    report.add("")


def prg_table(report: Report, device: torch.device) -> None:
    generator = prg_module.AesPrg(prg_module.new_key())
    count = 1 << 22
    host_s, _ = timed_on(torch.device("cpu"), lambda: generator.random_int64((count,)))
    dev_s, _ = timed_on(device, lambda: generator.random_int64((count,), device))
    report.add("## AES-CTR randomness (32 MiB draw)", "",
               f"host only: {8 * count / host_s / 1e9:.2f} GB/s; onto {device}: {8 * count / dev_s / 1e9:.2f} GB/s", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--short", action="store_true", help="small shapes and 2-layer models (CI)")
    parser.add_argument("--out", type=Path, default=Path("gpu_results.md"))
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip model pairs that would not fit")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    device = torch.device(args.device)
    report = Report(args.out, args.device, args.short)
    check_gemm(report, device, args.short)
    check_protocols(report, device, args.short)
    prg_table(report, device)
    check_models(report, device, args.short, deadline)
    chooser_table(report)
    print(args.out.read_text())
    return 0 if all(v == PASS for _, v in report.verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
