"""Parties rebuild a model's structure from its public config and attach received shares."""

from __future__ import annotations

import pytest
import torch
import transformers

from veil.nn.private import import_hf
from veil.parties.models import (
    HeldShare,
    ModelError,
    ModelStore,
    attach_shares,
    build_structure,
    check_request,
    unique_params,
)


def tiny_models() -> list:
    torch.manual_seed(0)
    return [
        transformers.BertModel(
            transformers.BertConfig(
                vocab_size=50,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=16,
            )
        ),
        transformers.GPT2LMHeadModel(
            transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=16)
        ),
        transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=50,
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=16,
            )
        ),
    ]


def _shares(params: dict) -> dict[str, HeldShare]:
    return {
        name: HeldShare(torch.zeros((2, *value.shape), dtype=torch.int64), 18)
        for name, value in params.items()
    }


@pytest.mark.parametrize("hf", tiny_models(), ids=lambda m: type(m).__name__)
def test_structure_from_config_matches_the_owners_model(hf) -> None:
    with torch.no_grad():
        owner = unique_params(import_hf(hf.eval()))
    structure = build_structure(type(hf).__name__, hf.config.to_json_string(use_diff=False))
    party = unique_params(structure)
    assert list(owner) == list(party)
    assert all(tuple(owner[k].shape) == tuple(party[k].shape) for k in owner)
    attached = attach_shares(structure, _shares(owner))
    assert all(isinstance(v, HeldShare) for _, v in attached.named_params())


def test_mismatched_shares_rejected_with_the_weight_name() -> None:
    hf = tiny_models()[0].eval()
    config = hf.config.to_json_string(use_diff=False)
    params = unique_params(build_structure("BertModel", config))
    shares = _shares(params)
    name = next(iter(shares))
    wrong = dict(shares)
    wrong[name] = HeldShare(torch.zeros((2, 3), dtype=torch.int64), 18)
    with pytest.raises(ModelError, match=name.replace(".", r"\.")):
        attach_shares(build_structure("BertModel", config), wrong)
    missing = dict(shares)
    del missing[name]
    with pytest.raises(ModelError, match="missing"):
        attach_shares(build_structure("BertModel", config), missing)


def test_only_allow_listed_families_are_built() -> None:
    with pytest.raises(ModelError, match="unsupported model family"):
        build_structure("os.system", "{}")
    with pytest.raises(ModelError, match="invalid model config"):
        build_structure("BertModel", "not json")


def test_request_for_unknown_model_is_refused_before_running() -> None:
    store = ModelStore()
    assert "has not been shared" in check_request(store, "veil.embed", {"model": "m"})
    assert check_request(store, "veil.share_model", {"model": "m"}) is None
