"""GPT-2: our model with the exact backend against Hugging Face, and KV-cache generation."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from veil.nn.backend import ExactBackend
from veil.nn.generate import generate
from veil.nn.gpt2 import GPT2LMHeadModel

VOCAB = 97
WIDTH = 4 * 64  # the MLP's inner size, the longest dot product
DEPTH = 3


@pytest.fixture(scope="module")
def hf_gpt2(perturb_norms) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=64,
        n_layer=DEPTH,
        n_head=4,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=None,
    )
    return perturb_norms(transformers.GPT2LMHeadModel(config).eval())


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(1, VOCAB, (2, 7))


@torch.no_grad()
def test_logits_match_hf(hf_gpt2, prompts, matches):
    """In float64, within the accumulation bound of tests/nn/conftest.py (about 1e-10)."""
    hf = copy.deepcopy(hf_gpt2).double()
    logits = GPT2LMHeadModel.from_hf(hf)(ExactBackend(), prompts)
    matches(logits, hf(prompts).logits, width=WIDTH, depth=DEPTH)


def test_layernorm_gains_are_folded_into_the_projections(hf_gpt2):
    names = {name for name, _ in GPT2LMHeadModel.from_hf(hf_gpt2).named_params()}
    assert not any(".ln_1." in name or ".ln_2." in name for name in names)
    assert {"ln_f.weight", "ln_f.bias"} <= names


@torch.no_grad()
def test_last_only_is_the_last_position(hf_gpt2, prompts):
    model, ops = GPT2LMHeadModel.from_hf(hf_gpt2), ExactBackend()
    torch.testing.assert_close(model(ops, prompts, last_only=True), model(ops, prompts)[:, -1])


@torch.no_grad()
def test_causal_mask_hides_future_tokens(hf_gpt2, prompts):
    model, ops = GPT2LMHeadModel.from_hf(hf_gpt2), ExactBackend()
    changed = prompts.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % VOCAB
    torch.testing.assert_close(model(ops, changed)[:, :4], model(ops, prompts)[:, :4])


@torch.no_grad()
def test_kv_cache_generation_equals_recomputation(hf_gpt2, prompts, greedy_uncached):
    model, ops = GPT2LMHeadModel.from_hf(hf_gpt2), ExactBackend()
    cached = torch.stack(generate(model, ops, prompts, max_new_tokens=10), dim=1)
    assert torch.equal(cached, greedy_uncached(model, ops, prompts, 10))
    assert len(set(cached.flatten().tolist())) > 2, "degenerate test: constant output"


@torch.no_grad()
def test_greedy_generation_matches_hf_generate(hf_gpt2, prompts):
    model = GPT2LMHeadModel.from_hf(hf_gpt2)
    ours = torch.stack(generate(model, ExactBackend(), prompts, max_new_tokens=10), dim=1)
    expected = hf_gpt2.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=10,
        do_sample=False,
    )
    assert torch.equal(ours, expected[:, prompts.shape[1] :])
