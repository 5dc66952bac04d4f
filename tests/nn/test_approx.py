"""The models on the float twins of the MPC approximations (PUMA) stay close to exact."""

from __future__ import annotations

import pytest
import torch

from benchmarks.smollm2_steps import TEST_PROMPTS, step_errors
from veil.nn.backend import ApproxBackend, ExactBackend
from veil.nn.bert import BertModel, normalize, sentence_embedding
from veil.nn.demo import chat_ids
from veil.nn.generate import generate
from veil.nn.llama import LlamaForCausalLM

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A monkey is playing drums.",
]


@torch.no_grad()
def test_minilm_embeddings_on_puma_twins(minilm):
    """Range: real sentences; bound: cosine to the exact embedding >= 0.999."""
    hf, tokenizer = minilm
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    model = BertModel.from_hf(hf, pooler=False)

    def embed(ops):
        return normalize(sentence_embedding(model, ops, enc["input_ids"], enc["attention_mask"]))

    cosine = (embed(ExactBackend()) * embed(ApproxBackend.puma())).sum(-1)
    assert torch.all(cosine >= 0.999), cosine


@pytest.mark.slow
@torch.no_grad()
@pytest.mark.parametrize("prompt", ["What is the capital of France?", "Name three primary colors."])
def test_smollm2_greedy_on_puma_twins_matches_exact(smollm2, prompt):
    hf, tokenizer = smollm2
    model = LlamaForCausalLM.from_hf(hf)
    ids = chat_ids(tokenizer, prompt)
    exact = generate(model, ExactBackend(), ids, max_new_tokens=12)
    twins = ApproxBackend.puma()
    approx = generate(model, twins, ids, max_new_tokens=12)
    assert torch.equal(torch.cat(exact), torch.cat(approx))


@torch.no_grad()
@pytest.mark.parametrize(
    "prompt", [TEST_PROMPTS[0], *(pytest.param(p, marks=pytest.mark.slow) for p in TEST_PROMPTS[1:])]
)
def test_smollm2_logits_on_puma_twins_within_0_1_at_every_step(smollm2, prompt):
    """Issue 11's bound: last-position logits max abs error <= 0.1 at each of 8 greedy steps
    (teacher-forced on the exact tokens; measured worst 0.059 over these prompts, 1.18 with
    PUMA's SiLU and a 5-squaring softmax)."""
    hf, tokenizer = smollm2
    model = LlamaForCausalLM.from_hf(hf)
    ids = chat_ids(tokenizer, prompt)
    steps = 8
    sequence = torch.cat([ids, torch.stack(generate(model, ExactBackend(), ids, steps), 1)], 1)
    twins = ApproxBackend.puma()
    errors = step_errors(model(ExactBackend(), sequence)[0], model(twins, sequence)[0], ids.shape[1], steps)
    assert errors.max() <= 0.1, errors
