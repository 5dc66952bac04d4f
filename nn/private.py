"""Private inference: the models of :mod:`veil.nn` on secret shares across three parties.

Roles (DESIGN.md): the *model owner* secret-shares the weights once
(:class:`PrivateModel`); a *client* secret-shares its token ids per request and alone
reconstructs the output; the three compute parties run the same model code with
:class:`MPCBackend`, which maps every backend call to a protocol of :mod:`veil.protocols`.

Here the three parties are simulated in one process (:func:`veil.mpc.simulate`); the dealt
shares are exactly what each party would receive over the network, and no party's
program ever sees another party's pair.

Example::

    pm = PrivateModel.from_hf(hf_bert)                 # the model owner shares the weights
    result = pm.sentence_embedding(input_ids, attention_mask)
    result.output                                      # what the client reconstructs
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from veil import mpc
from veil.mpc import ArithShare
from veil.mpc.communicator import Traffic
from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.kernel_choice import synchronize
from veil.nn.generate import sampling_options
from veil.nn.modules import Module
from veil.nn.padding import UNPADDED_FAMILIES, as_batch, check_left_padded, check_unpadded
from veil.nn.progress import Progress
from veil.protocols.approx import argmax as argmax_protocol
from veil.protocols.approx import embedding as embedding_protocol
from veil.protocols.approx import gelu as gelu_protocol
from veil.protocols.approx import layernorm as layernorm_protocol
from veil.protocols.approx import sampling as sampling_protocol
from veil.protocols.approx import silu as silu_protocol
from veil.protocols.approx import softmax as softmax_protocol
from veil.protocols.approx import tanh as tanh_protocol
from veil.protocols.approx.rotary import RotaryColumns


class MPCBackend:
    """:class:`veil.nn.backend.Backend` on :class:`veil.mpc.ArithShare` values at one party.

    ``norm_headroom_bits`` is passed to the LayerNorm/RMSNorm protocols: rows whose sum
    of squares would overflow their range (e.g. SmolLM2's attention-sink position, with
    |x| up to ~25,000) are first scaled down by that many bits.
    """

    def __init__(self, party: mpc.Party, norm_headroom_bits: int = 0):
        self.party = party
        self.norm_headroom_bits = norm_headroom_bits

    def private_ids(self, ids: ArithShare) -> ArithShare:
        if not isinstance(ids, ArithShare) or ids.frac_bits != 0:
            raise TypeError("token ids must arrive as integer shares dealt by the client")
        return ids

    def reveal(self, x: ArithShare) -> ArithShare:
        """Results go to the client as shares: the party returns its pair, never opens it."""
        return x

    def cat(self, xs: Sequence[ArithShare], dim: int) -> ArithShare:
        return mpc.cat(list(xs), dim=dim)

    def gelu(self, x: ArithShare, approximate: str = "none") -> ArithShare:
        return gelu_protocol.gelu(x)

    def silu(self, x: ArithShare) -> ArithShare:
        return silu_protocol.silu(x)

    def tanh(self, x: ArithShare) -> ArithShare:
        return tanh_protocol.tanh(x)

    def softmax(self, x: ArithShare, dim: int = -1, mask: torch.Tensor | None = None) -> ArithShare:
        if dim not in (-1, x.ndim - 1):
            raise ValueError("the softmax protocol works over the last dimension")
        return softmax_protocol.softmax(x, mask=mask)

    def attend(self, scores: ArithShare, v: ArithShare, mask: torch.Tensor | None = None) -> ArithShare:
        return softmax_protocol.softmax_matmul(scores, v, mask=mask)

    def attention(
        self, q: ArithShare, k: ArithShare, v: ArithShare, mask: torch.Tensor | None = None,
        out: ArithShare | None = None,
    ) -> ArithShare:
        return softmax_protocol.attention(q, k, v, mask=mask, out=out)

    def layernorm(
        self,
        x: ArithShare,
        weight: ArithShare | None,
        bias: ArithShare | None,
        eps: float,
        then: ArithShare | None = None,
    ) -> ArithShare:
        return layernorm_protocol.layernorm(
            x, weight, bias, eps, headroom_bits=self.norm_headroom_bits, then=then
        )

    def layernorm_projected(
        self,
        x: ArithShare,
        weight: ArithShare | None,
        bias: ArithShare | None,
        eps: float,
        then: ArithShare,
    ) -> tuple[ArithShare, ArithShare]:
        return layernorm_protocol.layernorm_projected(
            x, weight, bias, then, eps, headroom_bits=self.norm_headroom_bits
        )

    def rmsnorm(
        self, x: ArithShare, weight: ArithShare | None, eps: float, then: ArithShare | None = None,
        rotary: RotaryColumns | None = None,
    ) -> ArithShare:
        return layernorm_protocol.rmsnorm(
            x, weight, eps, headroom_bits=self.norm_headroom_bits, then=then, rotate=rotary
        )

    def embedding(self, ids: ArithShare, table: ArithShare) -> ArithShare:
        return embedding_protocol.embedding(ids, table)

    def embedding_onehot(self, onehot: ArithShare, table: ArithShare) -> ArithShare:
        return embedding_protocol.embedding_onehot(onehot, table)

    def argmax(self, x: ArithShare) -> tuple[ArithShare, ArithShare]:
        return argmax_protocol.argmax(x)

    def sample(
        self, x: ArithShare, temperature: float, top_k: int | None, top_p: float | None
    ) -> tuple[ArithShare, ArithShare]:
        onehot = sampling_protocol.sample(x, temperature, top_k, top_p)
        return onehot, argmax_protocol.onehot_index(onehot)


STEP_TIMEOUT_SECONDS = 600.0
"""How long a streaming client waits for the next token before giving up on the parties."""

NORM_HEADROOM_BITS: dict[str, int] = {}
"""Default norm headroom per model family (none needs it now): LLaMA-family models carry
their residual stream scaled by 2^-2 instead (:func:`veil.nn.llama.scaled_stream`), and Gemma 3
scales only its residual norms' rows (:data:`veil.nn.gemma3.RESIDUAL_NORM_INPUT_SCALE`)."""


@dataclass
class Dealt:
    """A tensor secret-shared by an outside owner, as the simulated parties receive it.

    The components are kept once, as (x_0, x_1, x_2, x_0), so that party i's pair
    (x_i, x_{i+1}) is the view ``ring[i : i + 2]``: the three simulated parties share
    memory instead of holding six copies (in a deployment each party holds only its
    own pair).  Protocols never write into their inputs, so the views stay intact.
    """

    ring: torch.Tensor
    frac_bits: int

    @classmethod
    def of(cls, value: torch.Tensor, fxp: FixedPoint, device: torch.device | str = "cpu") -> Dealt:
        """Dealt on the host, then kept on ``device`` (where the parties compute).

        A value on the ``meta`` device has a shape and no data (a model built for a dry run,
        :mod:`veil.nn.estimate`): its components are uninitialised, which costs no dealing.
        """
        if isinstance(value, Dealt):  # dealt already (e.g. read back from the parties' stores)
            return value
        if value.device.type == "meta":
            frac = fxp.frac_bits if value.is_floating_point() else 0
            return cls(torch.empty(4, *value.shape, dtype=torch.int64, device=device), frac)
        components, frac = mpc.sharing.deal_components(value.detach(), fxp)
        return cls(torch.cat([components, components[:1]]).to(device), frac)

    def at(self, party: mpc.Party) -> ArithShare:
        pair = self.ring[party.rank : party.rank + 2]
        return ArithShare(party, pair.to(party.device), self.frac_bits)


@dataclass
class PartyReport:
    """What one party spent on a request."""

    wall_s: float
    traffic: Traffic
    by_protocol: dict[str, Traffic] = field(default_factory=dict)


class LayerLog:
    """Party 0's record of each layer step, with an optional bar: (seconds, bytes sent, send
    steps, critical-path rounds).

    It stands in for :class:`veil.nn.progress.Progress` (the models call ``advance`` once per
    layer evaluated), so the per-layer breakdown costs the model code nothing.
    """

    def __init__(self, party: mpc.Party, bar: Progress | None):
        self.party = party
        self.bar = bar
        self.steps: list[tuple[float, int, int, int]] = []
        self._mark = self._now()

    def _now(self) -> tuple[float, int, int, int]:
        total = self.party.comm.stats.total()
        return time.perf_counter(), total.bytes_sent, total.rounds, total.depth

    def advance(self, n: int = 1) -> None:
        now = self._now()
        self.steps.append(tuple(b - a for a, b in zip(self._mark, now)))
        self._mark = now
        if self.bar is not None:
            self.bar.advance(n)


@dataclass
class PrivateResult:
    """The client's reconstructed output and each party's costs.

    ``layers`` holds party 0's (seconds, bytes sent, send steps, critical-path rounds) for
    each layer evaluated, in order (for generation: every layer of every step).
    """

    output: Any
    reports: list[PartyReport]
    layers: list[tuple[float, int, int, int]] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return max(r.wall_s for r in self.reports)

    @property
    def max_bytes_sent(self) -> int:
        return max(r.traffic.bytes_sent for r in self.reports)

    @property
    def max_rounds(self) -> int:
        """Send steps of the busiest party (SPU's count)."""
        return max(r.traffic.rounds for r in self.reports)

    @property
    def depth(self) -> int:
        """Critical-path rounds: sequential message latencies of the whole request."""
        return max(r.traffic.depth for r in self.reports)

    def summary(self) -> str:
        sent = ", ".join(
            f"P{i} {r.traffic.bytes_sent / 1e6:.1f} MB" for i, r in enumerate(self.reports)
        )
        return (
            f"wall {self.wall_s:.1f} s; sent {sent}; {self.depth} critical-path rounds "
            f"({self.max_rounds} send steps)"
        )


class PrivateModel:
    """A model whose weights the model owner has secret-shared once; reused across requests."""

    def __init__(
        self,
        model: Module,
        fxp: FixedPoint | None = None,
        device: str = "cpu",
        norm_headroom_bits: int | None = None,
    ):
        """``norm_headroom_bits=None`` takes the family default (:data:`NORM_HEADROOM_BITS`)."""
        self.fxp = fxp or FixedPoint()
        self.device = device
        if norm_headroom_bits is None:
            norm_headroom_bits = NORM_HEADROOM_BITS.get(type(model).__name__, 0)
        self.norm_headroom_bits = norm_headroom_bits
        self._shared = model.map_params(lambda t: Dealt.of(t, self.fxp, device))
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _party_model(self, party: mpc.Party) -> Iterator[Module]:
        """This party's model for one request (a streamed model loads its weights meanwhile)."""
        yield self._model_at(party)

    def _model_at(self, party: mpc.Party) -> Module:
        """This party's copy of the model: the same structure, holding only its own pairs."""
        dealt = {id(p): p for _, p in self._shared.named_params()}
        local = copy.deepcopy(self._shared, memo=dict(dealt))
        return local.map_params(lambda d: d.at(party))

    def run(
        self,
        program: Callable[..., Any],
        client_inputs: dict[str, torch.Tensor],
        public: dict[str, Any] | None = None,
        progress: tuple[int, str] | None = None,
    ) -> PrivateResult:
        """Run ``program(model, ops, **shares, **public, progress=...)`` at the three parties.

        ``client_inputs`` are dealt by the client (secret); ``program`` returns an
        ArithShare or a list of them, which go back to the client as shares and are
        reconstructed only there.  ``progress`` = (steps, label) draws a bar from party 0.
        Requests are served one at a time.
        """
        if "input_ids" in client_inputs:
            check_token_ids(client_inputs["input_ids"], vocab_size(self._shared))
        inputs = {name: Dealt.of(torch.as_tensor(v), self.fxp) for name, v in client_inputs.items()}
        public = public or {}

        def party_program(party: mpc.Party):
            ops = MPCBackend(party, self.norm_headroom_bits)
            shares = {name: d.at(party) for name, d in inputs.items()}
            log = None
            if party.rank == 0:
                log = LayerLog(party, Progress(*progress) if progress is not None else None)
            start = time.perf_counter()
            with self._party_model(party) as model, party.comm.scope("inference"):
                out = program(model, ops, **shares, **public, progress=log)
            synchronize(party.device)  # kernels may still be queued on a GPU
            wall = time.perf_counter() - start
            outs = out if isinstance(out, list) else [out]
            report = PartyReport(
                wall,
                party.comm.stats.total("inference"),
                party.comm.stats.by_child_scope("inference"),
            )
            # The client receives bytes: its output shares leave the device here.
            return [(o.data.cpu(), o.frac_bits) for o in outs], report, log.steps if log else []

        with self._lock:
            results = mpc.simulate(party_program, fxp=self.fxp, device=self.device)
        outputs = []
        for k in range(len(results[0][0])):
            frac = results[0][0][k][1]
            outputs.append(mpc.reconstruct([results[r][0][k][0] for r in range(3)], frac, self.fxp))
        reports = [r[1] for r in results]
        return PrivateResult(outputs, reports, results[0][2])

    # -- the requests of each model family --------------------------------------------
    def sentence_embedding(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        show_progress: bool = False,
    ) -> PrivateResult:
        """Mean-pooled BERT embeddings (batch, hidden); the client normalises them."""
        result = self.run(
            _sentence_embedding_program,
            {"input_ids": input_ids},
            {"attention_mask": attention_mask, "token_type_ids": token_type_ids},
            (len(self._shared.layers), "private layers") if show_progress else None,
        )
        result.output = result.output[0]
        return result

    def logits(
        self, input_ids: torch.Tensor, show_progress: bool = False, **public: Any
    ) -> PrivateResult:
        """The model's output for secret ids: (batch, seq, vocab) for decoders, class
        logits for BertForSequenceClassification, hidden states for BertModel."""
        result = self.run(_forward_program, {"input_ids": input_ids}, public)
        result.output = result.output[0]
        return result

    def generate(
        self,
        input_ids: torch.Tensor | list[list[int]],
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        show_progress: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> PrivateResult:
        """Continuation, greedy by default; ``output`` is the (batch, max_new_tokens) ids only
        the client sees.  ``do_sample=True`` draws each token from softmax(logits /
        temperature) within the ``top_k`` largest logits and the ``top_p`` nucleus (see
        :mod:`veil.protocols.approx.sampling`), the random draw made jointly by the parties.
        Prompts of different lengths come as a list (left padded here), or left padded with
        their public ``attention_mask`` (:func:`veil.nn.padding.left_pad` makes both).
        """
        sampling = sampling_options(vocab_size(self._shared), do_sample, temperature, top_k, top_p)
        input_ids, attention_mask = as_batch(input_ids, attention_mask)
        if attention_mask is not None:
            attention_mask = check_left_padded(attention_mask, torch.as_tensor(input_ids).shape)
            family = type(self._shared).__name__
            if family in UNPADDED_FAMILIES:
                check_unpadded(attention_mask, family)
        steps = len(self._shared.blocks) * max_new_tokens
        result = self.run(
            _generate_program,
            {"input_ids": input_ids},
            {"max_new_tokens": max_new_tokens, "sampling": sampling, "attention_mask": attention_mask},
            (steps, "private layers x tokens") if show_progress else None,
        )
        result.output = torch.stack(result.output, dim=-1)
        return result

    def generate_stream(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_at_eos: int | None = None,
        stoppable: bool = False,
    ) -> Iterator[torch.Tensor]:
        """:meth:`generate`, yielding each step's ids (batch,) as soon as the parties end it.

        By default the parties run all ``max_new_tokens`` steps whatever the client does
        with the tokens, so they learn nothing of the output's length.  ``stop_at_eos``
        (an end-of-sequence id) ends the stream once every row has produced it, and
        ``stoppable`` lets the caller end it by closing the iterator; in both cases the
        parties stop too, one or two steps later, and so learn roughly where the output
        ended (:mod:`veil.nn.stopping`).
        """
        from veil.nn.stopping import EosWatch, StepArrivals, step_hook

        sampling = sampling_options(vocab_size(self._shared), do_sample, temperature, top_k, top_p)
        stoppable = stoppable or stop_at_eos is not None
        arrivals = StepArrivals(self.fxp)
        stop = threading.Event()

        def program(model, ops, input_ids, progress):
            from veil.nn.generate import generate

            party = ops.party

            def publish(index: ArithShare) -> None:
                arrivals.put(party.rank, index.data.cpu())

            hook = step_hook(party, publish, stop.is_set if stoppable else None)
            indices = generate(model, ops, input_ids, max_new_tokens, progress, sampling, hook)
            arrivals.end(party.rank)
            return indices

        def serve() -> None:
            try:
                self.run(program, {"input_ids": input_ids})
            except BaseException as exc:  # noqa: BLE001 - re-raised at the consumer
                arrivals.end(-1, exc)

        eos = EosWatch(stop_at_eos) if stop_at_eos is not None else None
        worker = threading.Thread(target=serve, name="private-generate", daemon=True)
        worker.start()
        try:
            for step in arrivals.steps(timeout=STEP_TIMEOUT_SECONDS):
                yield step
                if eos is not None and eos.ended(step):
                    return
        finally:
            stop.set()
            worker.join()

    @classmethod
    def from_hf(
        cls,
        hf_model: Any,
        fxp: FixedPoint | None = None,
        device: str = "cpu",
        norm_headroom_bits: int | None = None,
    ) -> PrivateModel:
        """Import a ``transformers`` model (BERT, GPT-2, LLaMA family) and share its weights."""
        return cls(import_hf(hf_model), fxp, device, norm_headroom_bits)


def vocab_size(model: Module) -> int:
    """The (public) vocabulary size of one of our models."""
    config = getattr(model, "config", None) or model.bert.config
    return config.vocab_size


def check_token_ids(ids: torch.Tensor, vocab: int) -> None:
    """The client's own check before sharing: the parties cannot see the ids to check them."""
    ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.dim() != 2:
        raise ValueError(f"token ids must be an integer tensor (batch, seq), got {ids.dtype} {tuple(ids.shape)}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
        bad = ids[(ids < 0) | (ids >= vocab)][0].item()
        raise ValueError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")


def import_hf(hf_model: Any) -> Module:
    """Our model for a ``transformers`` model, by its class name."""
    from veil.nn.bert import BertForSequenceClassification, BertModel
    from veil.nn.gemma3 import Gemma3ForCausalLM
    from veil.nn.gpt2 import GPT2LMHeadModel
    from veil.nn.llama import LlamaForCausalLM

    families = {
        "BertModel": lambda m: BertModel.from_hf(m, pooler=False),
        "BertForSequenceClassification": BertForSequenceClassification.from_hf,
        "GPT2LMHeadModel": GPT2LMHeadModel.from_hf,
        "LlamaForCausalLM": LlamaForCausalLM.from_hf,
        "Gemma3ForCausalLM": Gemma3ForCausalLM.from_hf,
    }
    name = type(hf_model).__name__
    if name not in families:
        raise ValueError(f"unsupported model class {name}; supported: {', '.join(families)}")
    return families[name](hf_model)


def _sentence_embedding_program(model, ops, input_ids, attention_mask, token_type_ids, progress):
    from veil.nn.bert import sentence_embedding

    return sentence_embedding(model, ops, input_ids, attention_mask, token_type_ids, progress)


def _forward_program(model, ops, input_ids, progress, **public):
    if "progress" in inspect.signature(model.__call__).parameters:
        public["progress"] = progress
    return model(ops, input_ids, **public)


def _generate_program(model, ops, input_ids, max_new_tokens, sampling, attention_mask, progress):
    from veil.nn.generate import generate

    return generate(model, ops, input_ids, max_new_tokens, progress, sampling, attention_mask=attention_mask)
