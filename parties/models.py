"""Models served by the parties: shared once by the model owner, kept in memory by name.

The model owner sends each party only its own pair of every weight, seed-compressed
(:mod:`veil.mpc.seeded`: party 0 gets two seeds, parties 1 and 2 a seed and one
component), through the ordinary client API (Upload, then the built-in program
:data:`SHARE_PROGRAM`), so the weights travel over the same mutual TLS as any request.  What is public travels in the
request's options: the ``transformers`` class name (from a fixed allow-list, never an
importable path) and its config as JSON.  Each party rebuilds the model *structure*
from that config alone -- a randomly initialised ``transformers`` model of the same
class, imported with :func:`veil.nn.private.import_hf` -- and then replaces every
parameter by the pair it received, checking that names and shapes match exactly.  A large
model travels in several requests of bounded size (:mod:`veil.parties.share_sessions`).

The programs of :func:`model_programs` run requests on a stored model with
:class:`veil.nn.private.MPCBackend`; inputs and outputs stay shares, so no party opens the
token ids, an activation or a result.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from veil import mpc
from veil.mpc.arith import ArithShare
from veil.mpc.party import Party
from veil.mpc.seeded import Payload
from veil.nn.modules import Module
from veil.parties.request_scope import hold, scoped

if TYPE_CHECKING:
    from veil.parties.share_sessions import ShareTarget

SHARE_PROGRAM = "veil.share_model"
EMBED_PROGRAM = "veil.embed"
LOGITS_PROGRAM = "veil.logits"
GENERATE_PROGRAM = "veil.generate"
CALLER_OPTION = "veil.caller"
"""Option the parties set to the caller's identity (:mod:`veil.parties.authz`): the owner."""
INFO_PROGRAM = "veil.model_info"
"""Returns a model's public family and config (UTF-8 bytes as a public integer tensor), so
that a client can check its request (token ids in [0, vocab)) before sharing anything."""
INFO_PROBE = "probe"
"""The info request's only input, a placeholder: a party starts a request once its inputs
have arrived, and this request has no secret input."""
WEIGHT_PREFIX = "w:"
"""Input names of weights: ``w:<dotted parameter name>`` (uploaded as the parts
``s:<k>:w:<name>`` and ``c:<k>:w:<name>`` of :mod:`veil.mpc.seeded`)."""

FAMILIES = (
    "BertModel",
    "BertForSequenceClassification",
    "GPT2LMHeadModel",
    "LlamaForCausalLM",
    "Gemma3ForCausalLM",
)
MAX_NEW_TOKENS = 256


class ModelError(ValueError):
    """A model request is inconsistent with the stored model (name, shapes, options)."""


@dataclass
class HeldShare:
    """One party's pair of a weight (int64, shape (2, ...)) and its fractional bits."""

    pair: torch.Tensor
    frac_bits: int

    def at(self, party: Party) -> ArithShare:
        return ArithShare(party, self.pair.to(party.device), self.frac_bits)


@dataclass
class ServedModel:
    """A model's public description and this party's shares of its weights."""

    family: str
    config_json: str
    norm_headroom_bits: int
    module: Module  # parameters are HeldShare
    owner: str | None = None  # the identity that shared it (None: unauthenticated tests)

    def at(self, party: Party) -> Module:
        """A per-request copy holding ArithShares; the stored pairs are not copied."""
        held = {id(p): p for _, p in self.module.named_params()}
        local = copy.deepcopy(self.module, memo=dict(held))
        return local.map_params(lambda h: h.at(party))

    def open(self, party: Party) -> contextlib.AbstractContextManager[Module]:
        """This party's model for one request (a stored model streams its weights meanwhile)."""
        return contextlib.nullcontext(self.at(party))


def build_structure(family: str, config_json: str, meta: bool = False) -> Module:
    """Our model for a ``transformers`` class and config, with random (public) weights,
    or with every weight a ``meta`` tensor (names and shapes, no memory) for ``meta``."""
    import transformers
    from transformers import CONFIG_MAPPING

    from veil.nn.lazy_import import build_on_meta
    from veil.nn.private import import_hf

    if family not in FAMILIES:
        raise ModelError(f"unsupported model family {family!r}; supported: {', '.join(FAMILIES)}")
    try:
        raw = json.loads(config_json)
        config = CONFIG_MAPPING[raw["model_type"]].from_dict(raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"invalid model config: {exc}") from None
    hf_class = getattr(transformers, family)
    with torch.no_grad():
        if not meta:
            return import_hf(hf_class(config).eval())
        hf_model = build_on_meta(lambda: hf_class(config))
        return import_hf(hf_model).map_params(lambda v: torch.empty_like(v, device="meta"))


def unique_params(module: Module) -> dict[str, Any]:
    """Parameters by their first dotted name; a tied parameter appears once."""
    return module.unique_params()


def _check_names(expected: dict[str, Any], got: dict[str, Any]) -> None:
    missing, extra = set(expected) - set(got), set(got) - set(expected)
    if missing or extra:
        raise ModelError(
            f"weight shares do not match the config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(extra)[:5]}"
        )


def attach_shares(structure: Module, shares: dict[str, HeldShare]) -> Module:
    """Replace every parameter of ``structure`` by its received share (names, shapes checked)."""
    expected = unique_params(structure)
    _check_names(expected, shares)
    for name, value in expected.items():
        if tuple(shares[name].pair.shape[1:]) != tuple(value.shape):
            raise ModelError(
                f"weight {name!r} has shape {tuple(shares[name].pair.shape[1:])}, "
                f"the config says {tuple(value.shape)}"
            )
    by_id = {id(value): name for name, value in expected.items()}
    return structure.map_params(lambda value: shares[by_id[id(value)]])


class ModelStore:
    """The models this party serves, by name (thread-safe; replaced atomically)."""

    def __init__(self) -> None:
        from veil.parties.share_sessions import ShareSessions

        self._models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()
        self.sessions = ShareSessions()

    def begin_share(self, name: str, model: ServedModel) -> ShareTarget:
        """Where the weights of ``model`` (its ``module``: the structure) go while a share
        is under way; here they are kept in memory, expanded, until the share commits."""
        from veil.parties.share_sessions import MemoryShare

        return MemoryShare(self, name, model)

    def put(self, name: str, model: ServedModel) -> None:
        """Store ``model``; replacing one takes its owner (checked again here, atomically,
        in case two owners raced past the admission check)."""
        with self._lock:
            current = self._models.get(name)
            if current is not None and current.owner != model.owner:
                raise ModelError(f"model {name!r} belongs to {current.owner!r}")
            self._models[name] = model

    def owner(self, name: str) -> str | None:
        """The identity that shared model ``name``, or None if there is none."""
        with self._lock:
            model = self._models.get(name)
        return model.owner if model is not None else None

    def get(self, name: str) -> ServedModel:
        with self._lock:
            model = self._models.get(name)
        if model is None:
            raise ModelError(f"no model named {name!r} has been shared with this party")
        return model

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._models


# -- programs ---------------------------------------------------------------------------

Program = Callable[[Party, dict[str, ArithShare], dict[str, str]], dict[str, ArithShare]]


def model_programs(store: ModelStore) -> dict[str, Program]:
    """The built-in programs over ``store``: share a model, embed, logits, generate."""

    def share_model(party: Party, inputs: dict[str, Payload], options: dict[str, str]):
        payloads = {}
        for key, value in inputs.items():
            if not isinstance(value, Payload):
                raise ModelError(f"weight {key!r} must be uploaded seed-compressed")
            payloads[key[len(WEIGHT_PREFIX) :]] = value
        store.sessions.receive(store, options, payloads)
        return {}

    def embed(party: Party, inputs: dict[str, ArithShare], options: dict[str, str]):
        from veil.nn.bert import sentence_embedding

        model, ops, ids = _prepare(store, party, inputs, options)
        mask = _public_tensor(options, "attention_mask", torch.ones(ids.shape, dtype=torch.int64))
        types = _public_tensor(options, "token_type_ids", None)
        return {"embedding": sentence_embedding(model, ops, ids, mask, types)}

    def logits(party: Party, inputs: dict[str, ArithShare], options: dict[str, str]):
        model, ops, ids = _prepare(store, party, inputs, options)
        return {"logits": model(ops, ids)}

    def generate(party: Party, inputs: dict[str, ArithShare], options: dict[str, str]):
        from veil.nn.generate import generate as greedy  # greedy unless sampling is set

        model, ops, ids = _prepare(store, party, inputs, options)
        steps = int(_option(options, "max_new_tokens"))
        if not 1 <= steps <= MAX_NEW_TOKENS:
            raise ModelError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}, got {steps}")
        from veil.nn.private import vocab_size
        from veil.parties.validation import sampling_from_options

        sampling = sampling_from_options(options, vocab_size(model))
        on_step = streamed_steps(party, options)
        mask = _public_tensor(options, "attention_mask", None)
        indices = greedy(model, ops, ids, steps, sampling=sampling, on_step=on_step, attention_mask=mask)
        return {"tokens": mpc.stack(indices, dim=-1)}

    def info(party: Party, inputs: dict[str, ArithShare], options: dict[str, str]):
        served = store.get(_option(options, "model"))
        text = json.dumps({"family": served.family, "config": served.config_json})
        data = torch.tensor(list(text.encode()), dtype=torch.int64)
        return {"info": ArithShare.from_ring_public(party, data, 0)}

    programs = {
        SHARE_PROGRAM: share_model,
        INFO_PROGRAM: info,
        EMBED_PROGRAM: embed,
        LOGITS_PROGRAM: logits,
        GENERATE_PROGRAM: generate,
    }
    return {name: scoped(program) for name, program in programs.items()}


STOPPABLE_OPTION = "stoppable"
"""Generate option (``"true"``): the client may stop generation early, and the parties learn
how many tokens it kept (:mod:`veil.nn.stopping`)."""


def streamed_steps(party: Party, options: dict[str, str]):
    """The ``on_step`` hook of a streaming generate request (None if it does not stream)."""
    from veil.nn.stopping import step_hook
    from veil.parties.step_streams import current_sink

    sink = current_sink()
    if sink is None:
        return None
    stoppable = options.get(STOPPABLE_OPTION) == "true"
    return step_hook(
        party, lambda index: sink.publish(index.data), sink.stop_requested if stoppable else None
    )


def check_request(store: ModelStore, program: str, options: dict[str, str]) -> str | None:
    """Why this party cannot run a model request (None if it can): checked before running."""
    if program == SHARE_PROGRAM:
        return store.sessions.check(options)
    if program not in (EMBED_PROGRAM, LOGITS_PROGRAM, GENERATE_PROGRAM, INFO_PROGRAM):
        return None
    name = options.get("model", "")
    if not store.has(name):
        return f"model {name!r} has not been shared with this party (share it first)"
    return None


def _prepare(
    store: ModelStore, party: Party, inputs: dict[str, ArithShare], options: dict[str, str]
):
    from veil.nn.private import MPCBackend

    served = store.get(_option(options, "model"))
    ids = inputs.get("input_ids")
    if not isinstance(ids, ArithShare) or ids.frac_bits != 0 or ids.ndim != 2:
        raise ModelError("input_ids must be integer shares of shape (batch, seq)")
    return hold(served.open(party)), MPCBackend(party, served.norm_headroom_bits), ids


def _option(options: dict[str, str], key: str) -> str:
    if key not in options:
        raise ModelError(f"option {key!r} is required")
    return options[key]


def _public_tensor(options: dict[str, str], key: str, default: torch.Tensor | None):
    """A public integer tensor passed as a JSON list (attention mask, token types)."""
    if key not in options:
        return default
    try:
        return torch.tensor(json.loads(options[key]), dtype=torch.int64)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"option {key!r} is not an integer array: {exc}") from None
