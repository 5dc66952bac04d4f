"""Requests checked against the model's public config before anything runs (no cluster)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from veil.parties.models import ModelStore, ServedModel, build_structure
from veil.parties.validation import (
    ModelSpec,
    RequestInvalid,
    client_ids,
    validate_request,
)

from .test_models import tiny_bert, tiny_gpt2

VOCAB = 64
POSITIONS = 32


def _configs() -> dict[str, tuple[str, str]]:
    """The public configs of test_models' tiny models (vocab 64, 32 positions)."""
    return {
        "bert": ("BertModel", tiny_bert().config.to_json_string(use_diff=False)),
        "gpt": ("GPT2LMHeadModel", tiny_gpt2().config.to_json_string(use_diff=False)),
    }


@pytest.fixture(scope="module")
def store() -> ModelStore:
    store = ModelStore()
    for name, (family, config_json) in _configs().items():
        store.put(name, ServedModel(family, config_json, 0, build_structure(family, config_json)))
    return store


IDS = {"input_ids": ((2, 5), 0)}
SAMPLE = {"model": "gpt", "max_new_tokens": "2", "do_sample": "true"}  # the tiny GPT: vocab 64
MASK_2x5 = json.dumps([[1] * 5, [1, 1, 1, 0, 0]])

REFUSED = [
    ("veil.generate", {"model": "gpt", "max_new_tokens": "0"}, IDS, "max_new_tokens must be"),
    ("veil.generate", {"model": "gpt", "max_new_tokens": "-3"}, IDS, "got -3"),
    ("veil.generate", {"model": "gpt", "max_new_tokens": "257"}, IDS, "1..256, got 257"),
    ("veil.generate", {"model": "gpt", "max_new_tokens": "two"}, IDS, "integer, got 'two'"),
    ("veil.generate", {"model": "gpt"}, IDS, "'max_new_tokens' is required"),
    ("veil.generate", {"model": "bert", "max_new_tokens": "2"}, IDS, "'bert' is a BertModel"),
    ("veil.embed", {"model": "gpt"}, IDS, "embed needs a BertModel"),
    ("veil.embed", {"model": "bert", "attention_mask": "[[1,1]]"}, IDS, "shape (1, 2)"),
    ("veil.embed", {"model": "bert", "attention_mask": "ones"}, IDS, "not a JSON integer array"),
    ("veil.embed", {"model": "bert", "attention_mask": "[[1,1],[1]]"}, IDS, "not a JSON"),
    ("veil.embed", {"model": "bert", "attention_mask": "[[2]*5]"}, IDS, "not a JSON"),
    (
        "veil.embed",
        {"model": "bert", "attention_mask": json.dumps([[1] * 5, [0] * 5])},
        IDS,
        "row 1 masks every position",
    ),
    (
        "veil.embed",
        {"model": "bert", "attention_mask": json.dumps([[1] * 5, [1, 1, 2, 1, 1]])},
        IDS,
        "holds 2 at (1, 2)",
    ),
    (
        "veil.embed",
        {"model": "bert", "token_type_ids": json.dumps([[0] * 5, [0, 0, 0, 0, 5]])},
        IDS,
        "'token_type_ids' holds 5",
    ),
    ("veil.logits", {"model": "gpt"}, {"input_ids": ((1, 0), 0)}, "is empty"),
    ("veil.logits", {"model": "gpt"}, {"input_ids": ((0, 4), 0)}, "is empty"),
    ("veil.logits", {"model": "gpt"}, {"input_ids": ((1, 33), 0)}, "exceed the model's 32"),
    ("veil.logits", {"model": "gpt"}, {"input_ids": ((5,), 0)}, "shape (batch, seq), got (5,)"),
    ("veil.logits", {"model": "gpt"}, {"input_ids": ((1, 4), 18)}, "18 fractional bits"),
    ("veil.logits", {"model": "gpt"}, {}, "'input_ids' is missing"),
    ("veil.logits", {"model": "gpt"}, {**IDS, "x": ((1,), 0)}, "unexpected inputs ['x']"),
    ("veil.logits", {"model": "gpt", "temperature": "1"}, IDS, "unknown option(s) ['temperature']"),
    (
        "veil.generate",
        {"model": "gpt", "max_new_tokens": "4"},
        {"input_ids": ((1, 30), 0)},
        "33 positions (30 ids + 3 fed-back tokens)",
    ),
    ("veil.share_model", {"model": "m", "family": "Evil", "config": "{}"}, {}, "family 'Evil'"),
    (
        "veil.share_model",
        {"model": "m", "family": "BertModel", "config": "{"},
        {},
        "config is not JSON",
    ),
    (
        "veil.share_model",
        {"model": "m", "family": "BertModel", "config": _configs()["bert"][1], "x": "1"},
        {},
        "unknown option(s) ['x']",
    ),
    ("veil.model_info", {"model": "gpt"}, IDS, "takes one input, 'probe'"),
    ("veil.generate", {**SAMPLE, "do_sample": "yes"}, IDS, "'do_sample' must be true or false"),
    ("veil.generate", {**SAMPLE, "temperature": "0"}, IDS, "temperature"),
    ("veil.generate", {**SAMPLE, "temperature": "nan"}, IDS, "must be finite"),
    ("veil.generate", {**SAMPLE, "top_k": "0"}, IDS, "top_k"),
    ("veil.generate", {**SAMPLE, "top_k": "65"}, IDS, "top_k"),
    ("veil.generate", {**SAMPLE, "top_p": "1.5"}, IDS, "top_p"),
    ("veil.generate", {**SAMPLE, "top_p": "most"}, IDS, "must be a number"),
    (
        "veil.generate",
        {"model": "gpt", "max_new_tokens": "2", "attention_mask": MASK_2x5},
        IDS,
        "row 1 is not left padded",
    ),
    (
        "veil.generate",
        {"model": "gpt", "max_new_tokens": "2", "attention_mask": "[[1,1]]"},
        IDS,
        "shape (1, 2)",
    ),
]


@pytest.mark.parametrize(("program", "options", "inputs", "expected"), REFUSED)
def test_malformed_request_refused_naming_the_problem(
    store, program, options, inputs, expected
) -> None:
    why = validate_request(store, program, options, inputs)
    assert why is not None and expected in why, why


ACCEPTED = [
    ("veil.generate", {"model": "gpt", "max_new_tokens": "4"}, {"input_ids": ((1, 29), 0)}),
    ("veil.generate", {"model": "gpt", "max_new_tokens": "32"}, {"input_ids": ((1, 1), 0)}),
    ("veil.generate", {**SAMPLE, "temperature": "0.7", "top_k": "5", "top_p": "0.9"}, IDS),
    ("veil.logits", {"model": "gpt"}, {"input_ids": ((1, 32), 0)}),
    (
        "veil.generate",
        {"model": "gpt", "max_new_tokens": "2", "attention_mask": json.dumps([[1] * 5, [0, 0, 1, 1, 1]])},
        IDS,
    ),
    ("veil.logits", {"model": "bert"}, IDS),
    ("veil.embed", {"model": "bert", "attention_mask": MASK_2x5}, IDS),
    ("veil.model_info", {"model": "gpt"}, {"probe": ((1,), 0)}),
    ("veil.logits", {"model": "not-shared-here"}, {}),  # refused later, by check_request
    ("my.program", {"anything": "goes"}, {}),  # not a model program: not ours to judge
]


@pytest.mark.parametrize(("program", "options", "inputs"), ACCEPTED)
def test_well_formed_request_accepted(store, program, options, inputs) -> None:
    assert validate_request(store, program, options, inputs) is None


@pytest.fixture
def gpt_spec() -> ModelSpec:
    return ModelSpec.from_config(*_configs()["gpt"])


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([[1, VOCAB]], f"token id {VOCAB} at (0, 1) is outside [0, {VOCAB})"),
        ([[-1, 2]], "token id -1 at (0, 0)"),
        ([[3, 2023 + 2**15]], f"token id {2023 + 2**15} at (0, 1)"),
        ([[99999999999]], "token id 99999999999"),
    ],
)
def test_client_refuses_ids_outside_the_vocab_with_their_value(gpt_spec, ids, expected) -> None:
    with pytest.raises(RequestInvalid, match=re.escape(expected)):
        client_ids("veil.logits", {"model": "gpt"}, torch.tensor(ids), gpt_spec)


def test_client_refuses_float_and_bool_ids(gpt_spec) -> None:
    for ids in (torch.tensor([[1.0, 2.0]]), torch.tensor([[True]])):
        with pytest.raises(RequestInvalid, match="must be an integer tensor"):
            client_ids("veil.logits", {"model": "gpt"}, ids, gpt_spec)


def test_client_accepts_ids_in_range_as_int64(gpt_spec) -> None:
    ids = torch.tensor([[0, VOCAB - 1]], dtype=torch.int32)
    out = client_ids("veil.logits", {"model": "gpt"}, ids, gpt_spec)
    assert out.dtype == torch.int64 and out.tolist() == [[0, VOCAB - 1]]
