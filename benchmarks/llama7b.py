"""LLaMA-7B, PUMA's headline model, privately on one machine: weight shares streamed.

    python -m benchmarks.models llama7b                   # 32 layers: 4 -> 1, 8 -> 1, then 8 -> 4
    python -m benchmarks.models llama7b --layers 2        # the same shapes, 2 layers (a quick look)
    python -m benchmarks.models llama7b --mode store --store /big/disk

LLaMA-7B's exact configuration (:data:`veil.nn.seeded_weights.LLAMA_7B`) with seeded random
weights (:class:`~veil.nn.seeded_weights.SeededLlamaWeights`); the three parties are
simulated in one process, each streaming its seed-compressed shares one weight ahead of use
(:class:`~veil.nn.streamed.StreamedPrivateModel`), so resident memory stays at a few
weights per party whatever the model's size.  PUMA's settings (arXiv 2307.12533 §5.4):
4 tokens in -> 1 out and 8 in -> 1 out, then ``--new-tokens`` generated with the KV cache.

Where the shares come from (``--mode``):

- ``store``: the owner deals every weight into three on-disk share stores first (party 0
  keeps seeds only; parties 1 and 2 one int64 component each, 8 bytes per parameter);
- ``regenerate``: when the disk lacks that room (2 x 8 bytes per parameter: 108 GB for
  7B), the data component is recomputed from the seeded weights on each read instead
  (:class:`~veil.nn.seeded_weights.RegeneratedShares`); ``auto`` picks by free space
  and says which mode ran.

For each setting it prints wall time, bytes sent per party, critical-path rounds (send
steps beside), peak resident memory of the whole process (all three parties), the time
split (party 0's compute = wall - waiting for weights; per party the loader's seed
expansion and store reads / regeneration, which run beside the compute), and the check
against a float64 plaintext forward of the same weights, streamed the same way: the next
token and the max logit error.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from veil.mpc.fixedpoint import FixedPoint
from veil.nn.backend import ExactBackend
from veil.nn.generate import generate
from veil.nn.seeded_weights import (
    LLAMA_7B,
    RegeneratedShares,
    SeededLlamaWeights,
    llama_skeleton,
    parameter_count,
)
from veil.nn.streamed import (
    DEFAULT_BUDGET_BYTES,
    StreamedPrivateModel,
    deal_to_stores,
    specs_in_order,
)
from veil.nn.streamed_plain import streamed_plain_model

if TYPE_CHECKING:
    from typing_extensions import Self

DISK_MARGIN_BYTES = 2 << 30


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> Self:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _next_token_program(model, ops, input_ids, progress):
    """Last-position logits and their argmax; the logits are opened only to measure error."""
    logits = model(ops, input_ids, last_only=True, progress=progress)
    _, index = ops.argmax(logits)
    return [logits, index]


def _ids(opened: torch.Tensor) -> torch.Tensor:
    return opened.to(torch.float64).round().long()


def _choose_mode(requested: str, store_root: Path, params: int) -> tuple[str, str]:
    need = 2 * 8 * params + DISK_MARGIN_BYTES
    store_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store_root).free
    room = f"the stores need {need / 1e9:.1f} GB, {store_root} has {free / 1e9:.1f} GB free"
    if requested == "store" and free < need:
        raise SystemExit(f"--mode store: {room}")
    if requested == "auto":
        requested = "store" if free >= need else "regenerate"
        return requested, f"{room}: {'stored shares' if requested == 'store' else 'regenerating the data component'}"
    return requested, room


class Sources:
    """The parties' share sources for either mode, with their time counters."""

    def __init__(self, mode: str, skeleton, weights: SeededLlamaWeights, fxp: FixedPoint, root: Path):
        self.mode = mode
        specs = specs_in_order(skeleton)
        if mode == "regenerate":
            self.regenerated = RegeneratedShares(weights, specs)
            self.sources = [self.regenerated.source(r) for r in range(3)]
            return
        from veil.parties.store import ShareStore

        stores = [ShareStore(root / f"party{r}") for r in range(3)]
        writers = [store.begin_model("llama7b", {"seed": weights.seed}) for store in stores]
        start = time.perf_counter()
        deal_to_stores(skeleton, weights, writers, fxp)
        for writer in writers:
            writer.commit()
        print(f"owner dealt {len(specs)} weights into three stores in {time.perf_counter() - start:.0f} s")
        self.sources = [store.reader("llama7b") for store in stores]

    def seconds(self) -> tuple[list[float], list[float]]:
        """Per party: (seed expansion, store reads or regeneration) so far."""
        if self.mode == "regenerate":
            regenerated = self.regenerated
            return list(regenerated.expand_s), [
                r + w for r, w in zip(regenerated.regenerate_s, regenerated.read_s)
            ]
        return [s.expand_s for s in self.sources], [s.read_s for s in self.sources]

    def between_requests(self) -> None:
        if self.mode == "regenerate":
            self.regenerated.clear()


def _split(before, after, mode: str) -> str:
    expand = [b - a for a, b in zip(before[0], after[0])]
    read = [b - a for a, b in zip(before[1], after[1])]
    fmt = "/".join
    reads = "x_2 recomputed at party 0 / waited for and copied at 1, 2" if mode == "regenerate" else "store reads"
    return (
        f"seed expansion {fmt(f'{x:.1f}' for x in expand)} s, "
        f"{reads} {fmt(f'{x:.1f}' for x in read)} s (parties 0/1/2, beside the compute)"
    )


def _report(label: str, result, spm: StreamedPrivateModel, peak: int, before, after, mode: str) -> None:
    stall = spm.prefetch_stats[0].stall_s
    print(f"{label}: wall {result.wall_s:.1f} s; {result.max_bytes_sent / 1e9:.3f} GB sent per party (max); "
          f"{result.depth} critical-path rounds ({result.max_rounds} send steps); "
          f"peak RSS {peak / 1e9:.2f} GB (three parties)")
    print(f"  time: party 0 computing {result.wall_s - stall:.1f} s, waiting for weights {stall:.1f} s; "
          + _split(before, after, mode))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=LLAMA_7B.n_layer)
    parser.add_argument("--settings", default="4,8", help="prompt lengths for n -> 1 (comma-separated)")
    parser.add_argument("--new-tokens", type=int, default=4, help="then generate this many tokens")
    parser.add_argument("--generate-from", type=int, default=None,
                        help="prompt length of the generation (default: the last setting's)")
    parser.add_argument("--mode", choices=["auto", "store", "regenerate"], default="auto")
    parser.add_argument("--store", type=Path, default=None, help="store root (default: a temporary directory)")
    parser.add_argument("--budget-gb", type=float, default=DEFAULT_BUDGET_BYTES / 2**30,
                        help="per party: weights resident at once (in use + loaded ahead)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true",
                        help="hidden 64, 4 heads, intermediate 176, vocab 512: the script end to end in seconds")
    args = parser.parse_args(argv)

    fxp = FixedPoint()
    config = dataclasses.replace(LLAMA_7B, n_layer=args.layers)
    if args.tiny:
        config = dataclasses.replace(config, hidden_size=64, n_head=4, n_kv_head=4, head_dim=16,
                                     intermediate_size=176, vocab_size=512)
    skeleton = llama_skeleton(config, fxp)
    params = parameter_count(skeleton)
    weights = SeededLlamaWeights(args.seed, config, fxp)
    budget = int(args.budget_gb * 2**30)
    print(f"LLaMA-7B shapes{' (tiny)' if args.tiny else ''}, {args.layers} layers: {params / 1e9:.3f} G parameters; "
          f"torch threads {torch.get_num_threads()}; prefetch budget {budget / 2**30:.1f} GiB per party")
    with tempfile.TemporaryDirectory(prefix="veil-llama7b-", dir=args.store) as root:
        mode, why = _choose_mode(args.mode, Path(root), params)
        print(f"mode: {mode} ({why})")
        sources = Sources(mode, skeleton, weights, fxp, Path(root))
        spm = StreamedPrivateModel(skeleton, sources.sources, fxp, budget_bytes=budget)
        prompts = torch.Generator().manual_seed(args.seed)
        lengths = [int(n) for n in args.settings.split(",") if n]
        ids = None
        for n in lengths:
            ids = torch.randint(0, config.vocab_size, (1, n), generator=prompts)
            before = sources.seconds()
            with PeakRss() as rss:
                result = spm.run(_next_token_program, {"input_ids": ids})
            after = sources.seconds()
            sources.between_requests()
            logits, token = result.output[0], int(_ids(result.output[1]).item())
            start = time.perf_counter()
            with PeakRss() as plain_rss, streamed_plain_model(skeleton, weights.float, budget) as (plain, _):
                want = plain(ExactBackend(), ids, last_only=True)
            plain_s = time.perf_counter() - start
            _report(f"{n} in -> 1 out", result, spm, rss.peak, before, after, mode)
            error = (logits.double() - want).abs().max().item()
            top2 = want[0].topk(2).values
            print(f"  plaintext float64 (streamed, {plain_s:.0f} s, peak RSS {plain_rss.peak / 1e9:.2f} GB): "
                  f"next token {int(want.argmax())}, private {token} "
                  f"({'identical' if token == int(want.argmax()) else 'DIFFERENT'}); max logit error {error:.3e} "
                  f"(top-2 gap {float(top2[0] - top2[1]):.3f})")
        if args.generate_from is not None:
            ids = torch.randint(0, config.vocab_size, (1, args.generate_from), generator=prompts)
        if args.new_tokens and ids is not None:
            before = sources.seconds()
            with PeakRss() as rss:
                result = spm.generate(ids, args.new_tokens)
            after = sources.seconds()
            sources.between_requests()
            with streamed_plain_model(skeleton, weights.float, budget) as (plain, _):
                want = torch.stack(generate(plain, ExactBackend(), ids, args.new_tokens), dim=-1)
            got = _ids(result.output)
            same = torch.equal(got, want.long())
            _report(f"{ids.shape[1]} in -> {args.new_tokens} out (KV cache)", result, spm, rss.peak, before, after, mode)
            print(f"  tokens private {got.tolist()}, plaintext {want.tolist()} "
                  f"({'identical' if same else 'DIFFERENT'})")
    print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
