"""Gemma 3: seeded tiny Gemma3ForCausalLM configs (the real architecture, small sizes) against
Hugging Face, in float64 on the exact backend.

The configs make every Gemma-only piece matter: norms with random gains (stored as offsets
from 1), a sliding window of 3 shorter than the prompts, local and global layers with
different RoPE bases, query_pre_attn_scalar different from head_dim, GQA.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers

from veil.nn.backend import ExactBackend
from veil.nn.gemma3 import Gemma3ForCausalLM, sliding_window_mask
from veil.nn.generate import generate
from veil.nn.private import import_hf

VOCAB = 101
WIDTH = 96  # the MLP's inner size, the longest dot product
DEPTH = 3
WINDOW = 3


def tiny_gemma3(seed: int, tie: bool = True, **overrides) -> transformers.Gemma3ForCausalLM:
    """A seeded tiny Gemma3ForCausalLM: layers local, global, local; every norm gain random."""
    torch.manual_seed(seed)
    settings = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "num_hidden_layers": DEPTH,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": WIDTH,
        "max_position_embeddings": 128,
        "query_pre_attn_scalar": 24,
        "sliding_window": WINDOW,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            "full_attention": {"rope_type": "default", "rope_theta": 5000.0},
        },
        "tie_word_embeddings": tie,
        "initializer_range": 0.3,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    config = transformers.Gemma3TextConfig(**(settings | overrides))
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        # Small embeddings, so that the sqrt(hidden)-scaled token does not drown the blocks'
        # outputs and a tied head does not just repeat the last token.
        model.model.embed_tokens.weight.mul_(0.1)
        for module in model.modules():
            if type(module).__name__ == "Gemma3RMSNorm":
                module.weight.normal_(0.0, 0.3)  # gain 1 + w; fresh models have w = 0
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def hf_gemma3(request) -> transformers.Gemma3ForCausalLM:
    return tiny_gemma3(seed=0, tie=request.param)


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, VOCAB, (2, 7))


@torch.no_grad()
def test_logits_match_hf(hf_gemma3, prompts, matches):
    """In float64, within the accumulation bound of tests/nn/conftest.py; HF's Gemma3RMSNorm
    computes in float32 whatever the dtype, and a layer has 5 of them on its path (two pre,
    two post, the query/key norm)."""
    hf = copy.deepcopy(hf_gemma3).double()
    model = Gemma3ForCausalLM.from_hf(hf)
    assert (model.lm_head is None) == hf.config.tie_word_embeddings
    matches(
        model(ExactBackend(), prompts), hf(prompts).logits, width=WIDTH, depth=DEPTH, float32_steps=5
    )


def test_import_hf_dispatches_gemma3(hf_gemma3):
    assert isinstance(import_hf(hf_gemma3), Gemma3ForCausalLM)


def test_sliding_window_mask_sees_the_last_window_positions():
    """Query at position p sees keys p - 2 .. p for a window of 3, also against a cache that
    kept only the last 2 keys (positions 3 and 4 of a 5-token past)."""
    full = sliding_window_mask(seq=5, past=0, window=3, kept=0)
    assert full.int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert sliding_window_mask(seq=1, past=5, window=3, kept=2).int().tolist() == [[1, 1, 1]]


@torch.no_grad()
def test_tokens_outside_the_window_do_not_reach_a_local_only_model():
    """With local layers only, logits at position 6 cannot depend on tokens 0..3 (receptive
    field: window - 1 = 2 positions back per layer, 2 layers)."""
    hf = tiny_gemma3(seed=2, num_hidden_layers=2, layer_types=["sliding_attention"] * 2)
    model, ops = Gemma3ForCausalLM.from_hf(hf), ExactBackend()
    ids = torch.randint(0, VOCAB, (1, 7))
    changed = ids.clone()
    changed[:, :2] = (changed[:, :2] + 1) % VOCAB
    torch.testing.assert_close(model(ops, changed)[:, 6], model(ops, ids)[:, 6])
    changed[:, 2] = (changed[:, 2] + 1) % VOCAB
    assert not torch.allclose(model(ops, changed)[:, 6], model(ops, ids)[:, 6])


@torch.no_grad()
def test_kv_cache_generation_equals_recomputation(hf_gemma3, prompts, greedy_uncached):
    """10 new tokens after 7: the local layers' trimmed caches must still give exactly the
    recomputed result well past the window."""
    model, ops = Gemma3ForCausalLM.from_hf(hf_gemma3), ExactBackend()
    cached = torch.stack(generate(model, ops, prompts, max_new_tokens=10), dim=1)
    assert torch.equal(cached, greedy_uncached(model, ops, prompts, 10))
    assert len(set(cached.flatten().tolist())) > 2, "degenerate test: constant output"
    cache = model.new_cache()
    model(ops, prompts, cache=cache)
    assert cache.layers[0].k.shape[2] == WINDOW - 1 and cache.layers[1].k.shape[2] == 7


@torch.no_grad()
def test_greedy_generation_matches_hf_generate(hf_gemma3, prompts):
    ours = generate(Gemma3ForCausalLM.from_hf(hf_gemma3), ExactBackend(), prompts, 10)
    expected = hf_gemma3.generate(
        prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=10, do_sample=False
    )
    assert torch.equal(torch.stack(ours, dim=1), expected[:, prompts.shape[1] :])


@pytest.mark.parametrize(
    ("setting", "value"),
    [("final_logit_softcapping", 30.0), ("attn_logit_softcapping", 50.0)],
)
def test_softcapping_is_refused_by_name(setting, value):
    with pytest.raises(ValueError, match=rf"unsupported Gemma 3 setting {setting}={value}"):
        Gemma3ForCausalLM.from_hf(tiny_gemma3(seed=0, **{setting: value}))


MPC_LOGIT_ERROR = 2e-3
"""Bound on |private - exact| logits for the tiny config: measured 4e-4..7e-4 over seeds 0-3
(the twins' approximation error, 5e-4, plus the protocols' ±1-ulp truncations, 3e-4 against
the twins), with margin for other prompts."""


@torch.no_grad()
def test_private_greedy_generation_matches_plaintext():
    """Secret ids and weights at three simulated parties: the prompt's logits stay within
    MPC_LOGIT_ERROR of exact float, and greedy tokens equal exact greedy tokens.  Seed 3's
    plaintext top-2 gaps (checked here) exceed 2 * MPC_LOGIT_ERROR at every step, so
    no step can flip within the bound."""
    from veil.nn.backend import ApproxBackend
    from veil.nn.private import PrivateModel

    hf = tiny_gemma3(seed=3)
    torch.manual_seed(103)
    prompt = torch.randint(0, VOCAB, (1, 5))
    model, exact = Gemma3ForCausalLM.from_hf(hf), ExactBackend()
    private = PrivateModel.from_hf(hf)

    logits = private.logits(prompt).output
    expected = model(exact, prompt).double()
    assert (logits - expected).abs().max() < MPC_LOGIT_ERROR
    twins = model(ApproxBackend.puma(), prompt).double()
    assert (logits - twins).abs().max() < (logits - expected).abs().max(), "not the twins' formulas"

    steps = 3
    ids, gaps = prompt, []
    for _ in range(steps):
        top = model(exact, ids, last_only=True)[0].topk(2)
        gaps.append(float(top.values[0] - top.values[1]))
        ids = torch.cat([ids, top.indices[:1][None]], dim=1)
    assert min(gaps) > 2 * MPC_LOGIT_ERROR, f"near-tie in plaintext: {gaps}"
    assert torch.equal(private.generate(prompt, max_new_tokens=steps).output, ids[:, -steps:])


def test_other_gemma_architectures_are_still_refused_before_sharing():
    """Gemma 2 has the same parameter names; it must not be taken for Gemma 3."""
    hf = transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(
            vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, head_dim=8, intermediate_size=32,
        )
    )
    with pytest.raises(ValueError, match="unsupported model class Gemma2ForCausalLM; supported: .*Gemma3ForCausalLM"):
        import_hf(hf)


def test_left_padded_batches_are_refused_before_any_work():
    """Gemma 3's local layers keep a window of keys that padding would shift: a padded
    batch is refused naming the family, in process and by the parties' validation."""
    from veil.nn.padding import left_pad
    from veil.nn.private import PrivateModel
    from veil.parties.models import GENERATE_PROGRAM
    from veil.parties.validation import ModelSpec, RequestInvalid, check_task

    hf = tiny_gemma3(seed=0)
    ids, mask = left_pad([[1, 2, 3], [4, 5]])
    with pytest.raises(ValueError, match="Gemma3ForCausalLM takes prompts of one length"):
        PrivateModel.from_hf(hf).generate(ids, 2, attention_mask=mask)
    spec = ModelSpec.from_config("Gemma3ForCausalLM", hf.config.to_json_string())
    options = {"model": "g", "max_new_tokens": "2", "attention_mask": json.dumps(mask.tolist())}
    with pytest.raises(RequestInvalid, match="one length per request"):
        check_task(GENERATE_PROGRAM, options, {"input_ids": (tuple(ids.shape), 0)}, spec)
