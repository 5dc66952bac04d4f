"""Error budget of the MPC approximations, one approximation at a time (issue 11).

    python -m benchmarks.accuracy                          # MiniLM, BERT, GPT-2, SmolLM2
    python -m benchmarks.accuracy --models minilm,gpt2     # a subset

Everything runs on the plaintext float backends (no MPC): the reference is our model on
:class:`~veil.nn.backend.ExactBackend`, and each measured run is the same model on an
:class:`~veil.nn.backend.ApproxBackend` whose set of float twins (the MPC approximations,
fixed-point rounded) is chosen.  For each approximation the model calls (found by recording
its backend calls), the table gives the error with every twin on, with every twin on but that
one (computed exactly) and with only that one on.  "Share" is the part of the all-twins error
that goes away when that one is made exact, ``(all - all but this) / all`` on the error named
in the table's heading; the shares need not add up to 100 %, since errors interact.

Models and what is measured against the exact float run:

- ``minilm``: the bundled all-MiniLM-L6-v2 on :data:`SENTENCES` (batched, padded); the sentence
  embeddings' worst cosine, error ``1 - min cos`` (computed as half the squared distance of
  the unit vectors, exact at zero), and their max abs difference;
- ``bert``: BERT-base, seeded (``BertConfig()`` defaults, ``torch.manual_seed(0)``), one random
  128-token input; the last hidden state's max / mean abs error;
- ``gpt2``: GPT-2 base, seeded (``GPT2Config()`` defaults), :data:`GPT2_PROMPTS` random
  32-token prompts; next-token logits at the last position, max / mean abs error, and flips
  (prompts whose greedy next token differs from the exact run's);
- ``smollm2``: the bundled SmolLM2-135M-Instruct on :data:`CHAT_PROMPTS` as one-turn chats;
  last-position logits as for GPT-2 (its residual stream scaled: :func:`veil.nn.llama.scaled_stream`).

The plaintext top-1 minus top-2 logit margin is printed beside the flips: a prompt can flip
only where the logit error reaches about half its margin.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from veil.nn.backend import ApproxBackend, Backend, ExactBackend

os.environ.setdefault("HF_HUB_OFFLINE", "1")

APPROXIMATIONS = ("gelu", "silu", "tanh", "softmax", "layernorm", "rmsnorm")
"""The backend calls that have a float twin of an MPC approximation (sampling is not used:
every run here is a single forward pass)."""

SENTENCES = [
    "A man is eating food.",
    "A man is riding a horse.",
    "The girl is carrying a baby.",
    "Quarterly revenue rose 12% to $4.2bn, beating analysts' forecasts.",
    "¿Dónde está la estación de tren? Zürich liegt am See; 東京は大きい都市です。",
    "def f(x): return x ** 2  # squares its input",
    "no",
    (
        "The printing press was invented by Johannes Gutenberg around 1440 in Mainz, Germany. "
        "It made books cheaper and faster to produce, and within a few decades printing shops "
        "had spread across Europe, carrying the ideas of the Renaissance and the Reformation to "
        "readers who had never before owned a book, and changing how science, religion and "
        "politics were argued about for centuries to come."
    ),
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Explain in one sentence what a hash function is.",
]
GPT2_PROMPTS = 4
GPT2_PROMPT_TOKENS = 32
BERT_SEQ = 128


@dataclass
class Case:
    """One model's budget: ``run(backend)`` returns its output, ``metrics(ref, out)`` its
    errors against the exact output (``primary`` names the one the shares are taken on)."""

    name: str
    run: Callable[[Backend], torch.Tensor]
    metrics: Callable[[torch.Tensor, torch.Tensor], dict[str, float | str]]
    primary: str
    norm_headroom_bits: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Budget:
    """The errors of one case: ``all``, ``none`` (every approximation exact), and per
    approximation the run with that one exact and the run with only that one approximated."""

    case: Case
    approximations: list[str]
    all: dict[str, float | str]
    none: dict[str, float | str]
    one_exact: dict[str, dict[str, float | str]]
    only_one: dict[str, dict[str, float | str]]

    def share(self, name: str) -> float:
        """Part of the all-twins error (on the primary metric) that making ``name`` exact removes."""
        total = self.all[self.case.primary]
        return (total - self.one_exact[name][self.case.primary]) / total if total else float("nan")


class _CallRecorder:
    """Passes every call to an :class:`ExactBackend` and remembers the names called
    (``attend`` and ``attention`` are the softmax followed by @ v: they count as calls of
    ``softmax``)."""

    def __init__(self) -> None:
        self.inner = ExactBackend()
        self.called: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        self.called.add("softmax" if name in ("attend", "attention") else name)
        return getattr(self.inner, name)


def approximations_used(case: Case) -> list[str]:
    """The approximations among :data:`APPROXIMATIONS` that the model's forward pass calls."""
    recorder = _CallRecorder()
    case.run(recorder)
    return [name for name in APPROXIMATIONS if name in recorder.called]


def backend(approximated: set[str], norm_headroom_bits: int = 0) -> ApproxBackend:
    """The PUMA twins for the names in ``approximated``, the exact functions for the rest."""
    exact = {name: None for name in APPROXIMATIONS if name not in approximated}
    return ApproxBackend.puma(norm_headroom_bits=norm_headroom_bits, **exact)


@torch.no_grad()
def error_budget(case: Case) -> Budget:
    """Run ``case`` exact, with every twin, and one twin at a time out and in."""
    used = approximations_used(case)
    reference = case.run(ExactBackend())

    def errors(approximated: set[str]) -> dict[str, float | str]:
        return case.metrics(reference, case.run(backend(approximated, case.norm_headroom_bits)))

    return Budget(
        case=case,
        approximations=used,
        all=errors(set(used)),
        none=errors(set()),
        one_exact={name: errors(set(used) - {name}) for name in used},
        only_one={name: errors({name}) for name in used},
    )


def _cell(errors: dict[str, float | str]) -> str:
    return " / ".join(f"{v:.2e}" if isinstance(v, float) else str(v) for v in errors.values())


def format_budget(budget: Budget) -> str:
    """The budget as a markdown table (cells list every metric, in the heading's order)."""
    metrics = " / ".join(budget.all)
    lines = [
        f"### {budget.case.name}",
        *budget.case.notes,
        f"errors: {metrics}; share on {budget.case.primary}",
        f"every approximation exact: {_cell(budget.none)}",
        "",
        "| approximation | all approximated | this one exact | share | only this one approximated |",
        "|---|---|---|---|---|",
    ]
    for name in budget.approximations:
        lines.append(f"| {name} | {_cell(budget.all)} | {_cell(budget.one_exact[name])} | "
                     f"{100 * budget.share(name) + 0.0:.1f} % | {_cell(budget.only_one[name])} |")
    return "\n".join(lines)


def abs_errors(reference: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """Max and mean abs difference."""
    diff = (out.double() - reference.double()).abs()
    return {"max abs": diff.max().item(), "mean abs": diff.mean().item()}


def logit_errors(reference: torch.Tensor, out: torch.Tensor) -> dict[str, float | str]:
    """Abs errors of last-position logits (prompts, vocab) and the greedy flips among the prompts."""
    flips = int((out.argmax(-1) != reference.argmax(-1)).sum())
    return abs_errors(reference, out) | {"flips": f"{flips}/{reference.shape[0]}"}


def embedding_errors(reference: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """``1 - min cos`` over the rows, as ½‖â − b̂‖² (exact at zero), and the max abs difference."""
    def unit(x: torch.Tensor) -> torch.Tensor:
        return x.double() / x.double().norm(dim=-1, keepdim=True)

    one_minus_cos = 0.5 * (unit(out) - unit(reference)).pow(2).sum(-1)
    return {"1 - min cos": one_minus_cos.max().item(), "max abs": abs_errors(reference, out)["max abs"]}


def margin_note(model_call: Callable[[Backend], torch.Tensor]) -> str:
    """The exact run's smallest top-1 minus top-2 logit gap over the prompts."""
    top2 = model_call(ExactBackend()).topk(2, dim=-1).values
    return f"smallest plaintext top-1 - top-2 logit margin over the prompts: {(top2[:, 0] - top2[:, 1]).min():.3f}"


def minilm_case() -> Case:
    from veil.nn.bert import BertModel
    from veil.nn.demo import load_minilm, run_minilm

    hf, tokenizer = load_minilm()
    model = BertModel.from_hf(hf, pooler=False)
    tokens = tokenizer(SENTENCES, padding=True)["attention_mask"]
    return Case(
        f"MiniLM-L6 sentence embeddings ({len(SENTENCES)} sentences, "
        f"{min(map(sum, tokens))}-{max(map(sum, tokens))} tokens)",
        lambda ops: run_minilm(ops, model, tokenizer, SENTENCES),
        embedding_errors, "1 - min cos",
    )


def bert_case(layers: int = 12, hidden: int = 768, seq: int = BERT_SEQ) -> Case:
    from transformers import BertConfig
    from transformers import BertModel as HFBert

    from veil.nn.private import import_hf

    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(hidden // 64, 1), intermediate_size=4 * hidden)
    model = import_hf(HFBert(config, add_pooling_layer=False).eval())
    ids = torch.randint(0, config.vocab_size, (1, seq))
    mask = torch.ones_like(ids)
    return Case(f"BERT-like seeded: {layers} layers, hidden {hidden}, seq {seq} (last hidden state)",
                lambda ops: model(ops, ids, mask), abs_errors, "mean abs")


def gpt2_case(layers: int = 12, hidden: int = 768, prompts: int = GPT2_PROMPTS,
              tokens: int = GPT2_PROMPT_TOKENS) -> Case:
    from transformers import GPT2Config, GPT2LMHeadModel

    from veil.nn.private import import_hf

    torch.manual_seed(0)
    config = GPT2Config(n_layer=layers, n_embd=hidden, n_head=max(hidden // 64, 1))
    model = import_hf(GPT2LMHeadModel(config).eval())
    ids = torch.randint(0, config.vocab_size, (prompts, tokens))

    def run(ops: Backend) -> torch.Tensor:
        return model(ops, ids, last_only=True)

    return Case(f"GPT-2-like seeded: {layers} layers, hidden {hidden}, {prompts} random {tokens}-token prompts "
                "(next-token logits)", run, logit_errors, "mean abs", notes=[margin_note(run)])


def smollm2_case() -> Case:
    from veil.nn.demo import chat_ids, load_smollm2
    from veil.nn.private import import_hf

    hf, tokenizer = load_smollm2()
    model = import_hf(hf)
    prompts = [chat_ids(tokenizer, prompt) for prompt in CHAT_PROMPTS]

    def run(ops: Backend) -> torch.Tensor:
        return torch.cat([model(ops, ids, last_only=True) for ids in prompts])

    lengths = [ids.shape[1] for ids in prompts]
    return Case(f"SmolLM2-135M-Instruct: {len(prompts)} chat prompts, {min(lengths)}-{max(lengths)} tokens "
                "(last-position logits)", run, logit_errors, "mean abs",
                0, [margin_note(run)])


CASES = {"minilm": minilm_case, "bert": bert_case, "gpt2": gpt2_case, "smollm2": smollm2_case}


def _stamp() -> str:
    """Date and ``uptime`` (the load), since other work shares these cores."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    return f"{time.strftime('%a %b %d %H:%M:%S %Z %Y')}; {uptime}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(CASES),
                        help=f"comma-separated subset of {', '.join(CASES)}")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown models {', '.join(unknown)}; choose from {', '.join(CASES)}")
    print(f"start: {_stamp()}\ntorch threads: {torch.get_num_threads()}")
    for name in names:
        start = time.perf_counter()
        print(f"\n{format_budget(error_budget(CASES[name]()))}")
        print(f"({time.perf_counter() - start:.0f} s with loading)")
    print(f"\nend: {_stamp()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
