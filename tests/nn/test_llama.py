"""LLaMA family: random GQA configs and the real SmolLM2-135M against Hugging Face."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from veil.nn.backend import ExactBackend
from veil.nn.generate import generate
from veil.nn.llama import LlamaForCausalLM

VOCAB = 101
WIDTH = 96  # the MLP's inner size, the longest dot product
DEPTH = 3


def _hf_llama(tie: bool, seed: int) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=DEPTH,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=WIDTH,
        max_position_embeddings=128,
        rope_theta=5000.0,
        tie_word_embeddings=tie,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def hf_llama(request, perturb_norms) -> transformers.LlamaForCausalLM:
    return perturb_norms(_hf_llama(tie=request.param, seed=0))


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (2, 7))


@torch.no_grad()
def test_logits_match_hf(hf_llama, prompts, matches):
    """In float64, within the accumulation bound of tests/nn/conftest.py; HF's two RMSNorms
    per layer round to float32 even in a float64 model."""
    hf = copy.deepcopy(hf_llama).double()
    model = LlamaForCausalLM.from_hf(hf)
    assert (model.lm_head is None) == hf.config.tie_word_embeddings
    assert model.config.rope_theta == 5000.0
    matches(
        model(ExactBackend(), prompts), hf(prompts).logits, width=WIDTH, depth=DEPTH, float32_steps=2
    )


def test_norm_gains_are_folded_into_the_projections(hf_llama):
    model = LlamaForCausalLM.from_hf(hf_llama)
    names = {name for name, _ in model.named_params()}
    assert not any("attn_norm" in name or "mlp_norm" in name for name in names)
    assert "norm.weight" in names, "the final norm keeps its gain (the LM head is tied)"


@torch.no_grad()
def test_causal_mask_hides_future_tokens(hf_llama, prompts):
    model, ops = LlamaForCausalLM.from_hf(hf_llama), ExactBackend()
    changed = prompts.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % VOCAB
    torch.testing.assert_close(model(ops, changed)[:, :3], model(ops, prompts)[:, :3])


@torch.no_grad()
def test_kv_cache_generation_equals_recomputation(hf_llama, prompts, greedy_uncached):
    model, ops = LlamaForCausalLM.from_hf(hf_llama), ExactBackend()
    cached = torch.stack(generate(model, ops, prompts, max_new_tokens=10), dim=1)
    assert torch.equal(cached, greedy_uncached(model, ops, prompts, 10))
    assert len(set(cached.flatten().tolist())) > 2, "degenerate test: constant output"


@torch.no_grad()
def test_greedy_generation_matches_hf_generate(hf_llama, prompts):
    ours = generate(LlamaForCausalLM.from_hf(hf_llama), ExactBackend(), prompts, 10)
    expected = hf_llama.generate(
        prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=10, do_sample=False
    )
    assert torch.equal(torch.stack(ours, dim=1), expected[:, prompts.shape[1] :])


SMOLLM2_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Water boils at a temperature of",
]


@pytest.fixture(scope="module")
def our_smollm2(smollm2) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_hf(smollm2[0])


# Loading the GGUF (parsing and de-quantising) alone takes about 20 s on 2 cores.
@pytest.mark.slow
@torch.no_grad()
def test_smollm2_logits_match_hf(smollm2, matches):
    """In float64, within the accumulation bound (HF's RMSNorms round to float32)."""
    hf, tokenizer = smollm2
    hf = copy.deepcopy(hf).double()
    ids = tokenizer(SMOLLM2_PROMPTS[0], return_tensors="pt")["input_ids"]
    model = LlamaForCausalLM.from_hf(hf)
    assert model.lm_head is None, "SmolLM2 ties its LM head to the embeddings"
    config = hf.config
    matches(
        model(ExactBackend(), ids),
        hf(ids).logits,
        width=config.intermediate_size,
        depth=config.num_hidden_layers,
        float32_steps=2,
    )


@pytest.mark.slow
@torch.no_grad()
@pytest.mark.parametrize("prompt", SMOLLM2_PROMPTS)
def test_smollm2_greedy_matches_hf_generate(smollm2, our_smollm2, prompt):
    hf, tokenizer = smollm2
    ops = ExactBackend()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    ours = generate(our_smollm2, ops, ops.private_ids(ids), max_new_tokens=8)
    expected = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False
    )[0, ids.shape[1] :]
    assert len(expected) == 8, "HF stopped at end-of-sequence: choose another prompt"
    assert torch.cat([ops.reveal(index) for index in ours]).tolist() == expected.tolist()
