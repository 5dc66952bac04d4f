"""Every model request checked against the model's public config before anything runs.

A request that a program cannot run (``max_new_tokens=0``, generate on an encoder, a
mask of the wrong shape, 513 ids on a 512-position model, float ids) would otherwise
fail *inside* the SPMD program, after the three parties agreed to run it; a failure
there leaves the links in an unknown state and every party relinks, failing the other
clients' requests too.  The same checks therefore run in two places:

- at each party, when the Run call arrives (:func:`validate_request`, wired by
  ``veil serve`` into :class:`veil.parties.service.InferenceService`), which answers
  INVALID_ARGUMENT naming the problem and never reaches the executor;
- at the client (:class:`veil.parties.client.VeilClient`), before anything is shared.

What a party can check is what is public: the options, the input names, shapes and
fractional bits (ids are integers: ``frac_bits`` 0).  The token ids themselves arrive as
secret shares, so no party can see whether an id lies in [0, vocab); only the client can,
and :func:`check_token_ids` is that check.  An id outside the range is not caught by the
protocol either: the embedding keeps the low ``ceil(log2 vocab)`` bits of the id (see
:func:`veil.protocols.approx.embedding.embedding`), so it silently becomes another token
or a zero row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from veil.nn.generate import Sampling
from veil.nn.padding import UNPADDED_FAMILIES, check_left_padded, check_unpadded
from veil.parties.models import (
    CALLER_OPTION,
    EMBED_PROGRAM,
    FAMILIES,
    GENERATE_PROGRAM,
    INFO_PROBE,
    INFO_PROGRAM,
    LOGITS_PROGRAM,
    MAX_NEW_TOKENS,
    SHARE_PROGRAM,
    STOPPABLE_OPTION,
    WEIGHT_PREFIX,
    ModelError,
    ModelStore,
)
from veil.parties.share_sessions import (
    LAST_OPTION,
    PART_OPTION,
    SESSION_OPTION,
    check_part_options,
)
from veil.parties.step_streams import STREAM_OPTION

if TYPE_CHECKING:
    from veil.parties.client import InferenceClient

IDS = "input_ids"
ENCODERS = ("BertModel", "BertForSequenceClassification")
DECODERS = ("GPT2LMHeadModel", "LlamaForCausalLM", "Gemma3ForCausalLM")
TASK_FAMILIES = {
    EMBED_PROGRAM: ("BertModel",),
    LOGITS_PROGRAM: FAMILIES,
    GENERATE_PROGRAM: DECODERS,
}
"""Which families each task runs on (embed mean-pools hidden states; generate needs a head)."""
OPTIONS = {
    SHARE_PROGRAM: frozenset({"model", "family", "config", "norm_headroom_bits"})
    | {SESSION_OPTION, PART_OPTION, LAST_OPTION},
    EMBED_PROGRAM: frozenset({"model", "attention_mask", "token_type_ids"}),
    LOGITS_PROGRAM: frozenset({"model"}),
    GENERATE_PROGRAM: frozenset(
        {"model", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "attention_mask"}
        | {STREAM_OPTION, STOPPABLE_OPTION}
    ),
    INFO_PROGRAM: frozenset({"model"}),
}
"""The option names each built-in program understands; any other name is refused."""
MAX_NORM_HEADROOM_BITS = 16

InputSpec = tuple[tuple[int, ...] | None, int]
"""What a party knows of an uploaded input: the shape of the value (not of its pair; None
for a seed-compressed value, whose shape party 0 cannot see) and its fractional bits."""


class RequestInvalid(ValueError):
    """A request that no party should start: its message names the problem."""


@dataclass(frozen=True)
class ModelSpec:
    """The public facts of a served model that requests are checked against."""

    family: str
    vocab_size: int
    max_positions: int
    type_vocab_size: int

    @classmethod
    def from_config(cls, family: str, config_json: str) -> ModelSpec:
        """Read the sizes from a ``transformers`` config (GPT-2 names its positions
        ``n_positions``; BERT and LLaMA ``max_position_embeddings``)."""
        config = _config(config_json)
        positions = config.get("n_positions", config.get("max_position_embeddings"))
        vocab = config.get("vocab_size")
        if not isinstance(vocab, int) or not isinstance(positions, int):
            raise RequestInvalid(f"the {family} config has no integer vocab_size / positions")
        return cls(family, vocab, positions, int(config.get("type_vocab_size", 0) or 0))


def validate_request(
    store: ModelStore, program: str, options: Mapping[str, str], inputs: Mapping[str, InputSpec]
) -> str | None:
    """Why a party refuses this request as malformed (None if it may run).

    A model that this party does not hold is not a malformed request (the owner may share
    it later); :func:`veil.parties.models.check_request` refuses it when the parties agree.
    """
    if program not in OPTIONS:
        return None
    try:
        if program == SHARE_PROGRAM:
            check_share(options, inputs)
            return None
        name = options.get("model", "")
        if not store.has(name):
            return None
        served = store.get(name)
        if program == INFO_PROGRAM:
            check_info(options, inputs)
            return None
        check_task(
            program, options, inputs, ModelSpec.from_config(served.family, served.config_json)
        )
    except (RequestInvalid, ModelError) as exc:
        return str(exc)
    return None


def check_share(options: Mapping[str, str], inputs: Mapping[str, InputSpec]) -> None:
    """The public part of a model share: known options, an allowed family, a parseable
    config, weight-named seed-compressed inputs (names and shapes are checked against the
    config when the parties expand them)."""
    _known_options(SHARE_PROGRAM, options)
    for key in ("model", "family", "config"):
        if not options.get(key):
            raise RequestInvalid(f"option {key!r} is required to share a model")
    if options["family"] not in FAMILIES:
        raise RequestInvalid(
            f"unsupported model family {options['family']!r}; supported: {', '.join(FAMILIES)}"
        )
    ModelSpec.from_config(options["family"], options["config"])
    malformed = check_part_options(options)
    if malformed is not None:
        raise RequestInvalid(malformed)
    headroom = _integer(options, "norm_headroom_bits", "0")
    if not 0 <= headroom <= MAX_NORM_HEADROOM_BITS:
        raise RequestInvalid(
            f"norm_headroom_bits must be in 0..{MAX_NORM_HEADROOM_BITS}, got {headroom}"
        )
    stray = sorted(name for name in inputs if not name.startswith(WEIGHT_PREFIX))
    if stray:
        raise RequestInvalid(f"inputs {stray[:5]} are not weights (names start {WEIGHT_PREFIX!r})")
    paired = sorted(name for name, (shape, _) in inputs.items() if shape is not None)
    if paired:
        raise RequestInvalid(
            f"weights {paired[:5]} arrived as pairs; weights are uploaded seed-compressed"
        )


def check_info(options: Mapping[str, str], inputs: Mapping[str, InputSpec]) -> None:
    """An info request: the model name and the one placeholder input."""
    _known_options(INFO_PROGRAM, options)
    if set(inputs) != {INFO_PROBE}:
        raise RequestInvalid(
            f"{INFO_PROGRAM} takes one input, {INFO_PROBE!r}, got {sorted(inputs)}"
        )


def check_task(
    program: str, options: Mapping[str, str], inputs: Mapping[str, InputSpec], spec: ModelSpec
) -> None:
    """Options and input shapes of an embed / logits / generate request on ``spec``."""
    _known_options(program, options)
    if spec.family not in TASK_FAMILIES[program]:
        task = program.rpartition(".")[2]
        raise RequestInvalid(
            f"{task} needs a {' or '.join(TASK_FAMILIES[program])} model; "
            f"{options.get('model', '')!r} is a {spec.family}"
        )
    stray = sorted(set(inputs) - {IDS})
    if stray:
        raise RequestInvalid(f"unexpected inputs {stray}; a model request takes only {IDS!r}")
    if IDS not in inputs:
        raise RequestInvalid(f"input {IDS!r} is missing (upload it before Run)")
    shape, frac_bits = inputs[IDS]
    if shape is None:
        raise RequestInvalid(f"{IDS} must be uploaded as share pairs, not seed-compressed")
    if frac_bits != 0:
        raise RequestInvalid(
            f"{IDS} must be integers (frac_bits 0), got fixed-point shares with "
            f"{frac_bits} fractional bits (float ids?)"
        )
    if len(shape) != 2:
        raise RequestInvalid(f"{IDS} must have shape (batch, seq), got {tuple(shape)}")
    batch, seq = shape
    if batch == 0 or seq == 0:
        raise RequestInvalid(f"{IDS} is empty (shape {tuple(shape)})")
    positions = seq
    if program == GENERATE_PROGRAM:
        steps = _integer(options, "max_new_tokens")
        if not 1 <= steps <= MAX_NEW_TOKENS:
            raise RequestInvalid(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}, got {steps}")
        positions = seq + steps - 1  # the last new token is never fed back
        sampling_from_options(options, spec.vocab_size)
        for flag in (STREAM_OPTION, STOPPABLE_OPTION):
            if options.get(flag, "false") not in ("true", "false"):
                raise RequestInvalid(f"option {flag!r} must be true or false, got {options[flag]!r}")
        if options.get(STOPPABLE_OPTION) == "true" and options.get(STREAM_OPTION) != "true":
            raise RequestInvalid("a stoppable request must stream (the client stops listening)")
        _left_padded(options, (batch, seq), spec.family)
    if positions > spec.max_positions:
        raise RequestInvalid(
            f"{positions} positions ({seq} ids"
            + (f" + {positions - seq} fed-back tokens" if positions > seq else "")
            + f") exceed the model's {spec.max_positions}"
        )
    if program == EMBED_PROGRAM:
        _public_array(options, "attention_mask", (batch, seq), 0, 2, need_one_per_row=True)
        _public_array(options, "token_type_ids", (batch, seq), 0, max(spec.type_vocab_size, 1))


def check_token_ids(input_ids: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """The client's check of what no party can see: every id an integer in [0, vocab).

    Returns the ids as int64; raises naming the first offending id and where it is.
    """
    ids = torch.as_tensor(input_ids)
    bad = (ids < 0) | (ids >= spec.vocab_size)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise RequestInvalid(
            f"token id {int(ids[where])} at {where} is outside [0, {spec.vocab_size}) "
            f"(the model's vocab_size)"
        )
    return ids.to(torch.int64)


def _known_options(program: str, options: Mapping[str, str]) -> None:
    # The caller's identity is stamped by the parties themselves (parties/authz.py).
    unknown = sorted(set(options) - OPTIONS[program] - {CALLER_OPTION})
    if unknown:
        raise RequestInvalid(
            f"unknown option(s) {unknown} for {program}; it takes {sorted(OPTIONS[program])}"
        )


def _config(config_json: str) -> dict:
    try:
        config = json.loads(config_json)
    except ValueError as exc:
        raise RequestInvalid(f"the model config is not JSON: {exc}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise RequestInvalid("the model config must be a JSON object with a model_type")
    return config


def sampling_from_options(options: Mapping[str, str], vocab: int) -> Sampling | None:
    """The generate request's sampling settings (None: greedy), named as in transformers'
    ``generate``: ``do_sample`` ("true"/"false"), ``temperature``, ``top_k``, ``top_p``;
    out-of-range values are refused even when ``do_sample`` is false."""
    from veil.nn.generate import sampling_options

    flag = options.get("do_sample", "false").lower()
    if flag not in ("true", "false"):
        raise RequestInvalid(f"option 'do_sample' must be true or false, got {flag!r}")
    top_k = options.get("top_k")
    top_p = options.get("top_p")
    try:
        return sampling_options(
            vocab,
            flag == "true",
            _number(options, "temperature", "1.0"),
            None if top_k is None else _integer(options, "top_k"),
            None if top_p is None else _number(options, "top_p"),
        )
    except ValueError as exc:
        raise RequestInvalid(str(exc)) from None


def _number(options: Mapping[str, str], key: str, default: str | None = None) -> float:
    text = options.get(key, default)
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RequestInvalid(f"option {key!r} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise RequestInvalid(f"option {key!r} must be finite, got {text!r}")
    return value


def _integer(options: Mapping[str, str], key: str, default: str | None = None) -> int:
    text = options.get(key, default)
    if text is None:
        raise RequestInvalid(f"option {key!r} is required")
    try:
        return int(text)
    except ValueError:
        raise RequestInvalid(f"option {key!r} must be an integer, got {text!r}") from None


def _public_array(
    options: Mapping[str, str],
    key: str,
    shape: tuple[int, int],
    low: int,
    high: int,
    need_one_per_row: bool = False,
) -> None:
    """A public JSON integer array option: its shape, its values in [low, high)."""
    if key not in options:
        return
    try:
        value = torch.tensor(json.loads(options[key]))
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:
        raise RequestInvalid(f"option {key!r} is not a JSON integer array: {exc}") from None
    if value.dtype == torch.bool or value.is_floating_point():
        raise RequestInvalid(f"option {key!r} must hold integers, got {value.dtype}")
    if tuple(value.shape) != shape:
        raise RequestInvalid(
            f"option {key!r} has shape {tuple(value.shape)}, the ids have shape {shape}"
        )
    outside = (value < low) | (value >= high)
    if bool(outside.any()):
        where = tuple(int(i) for i in outside.nonzero()[0])
        raise RequestInvalid(
            f"option {key!r} holds {int(value[where])} at {where}; allowed: {low}..{high - 1}"
        )
    if need_one_per_row:
        empty = (value.sum(-1) == 0).nonzero()
        if len(empty):
            raise RequestInvalid(f"option {key!r} row {int(empty[0])} masks every position")


def _left_padded(options: Mapping[str, str], shape: tuple[int, int], family: str) -> None:
    """A decoder batch's public mask: 0/1 of the ids' shape, each row left padded."""
    if "attention_mask" not in options:
        return
    _public_array(options, "attention_mask", shape, 0, 2)
    mask = torch.tensor(json.loads(options["attention_mask"]))
    try:
        check_left_padded(mask, shape)
        if family in UNPADDED_FAMILIES:
            check_unpadded(mask, family)
    except ValueError as exc:
        raise RequestInvalid(f"option 'attention_mask': {exc}") from None


def client_ids(
    program: str, options: Mapping[str, str], input_ids: torch.Tensor, spec: ModelSpec
) -> torch.Tensor:
    """The client's whole check of a model request before it shares anything: what the
    parties will check (options, shapes) and what only the client can (the id values)."""
    ids = torch.as_tensor(input_ids)
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise RequestInvalid(f"{IDS} must be an integer tensor, got dtype {ids.dtype}")
    check_task(program, options, {IDS: (tuple(ids.shape), 0)}, spec)
    return check_token_ids(ids, spec)


def fetch_spec(api: InferenceClient, model: str) -> ModelSpec:
    """Ask the parties for ``model``'s public family and config (:data:`INFO_PROGRAM`)."""
    probe = {INFO_PROBE: torch.zeros(1, dtype=torch.int64)}
    data = api.infer(INFO_PROGRAM, probe, {"model": model})["info"]
    info = json.loads(bytes(data.tolist()).decode())
    return ModelSpec.from_config(info["family"], info["config"])
