"""Private inference of the bundled real models against Hugging Face (issue 5's bounds).

- all-MiniLM-L6-v2: mean-pooled, normalised sentence embeddings from private inference
  have cosine >= 0.999 with Hugging Face's, for each of 8 varied sentences.
- SmolLM2-135M-Instruct: the first 8 greedily generated tokens under private inference
  equal plaintext greedy generation; the last-position logits' max abs error is <= 0.1
  (issue 11; measured 0.05-0.06 on the float twins, plus ~1e-3 of protocol error).
  One prompt runs by default (a bounded subset for CI); the other three are marked slow.

A greedy step whose two best plaintext logits are nearly tied cannot be reproduced by any
approximation (the private logits differ from float by up to ~0.06 at the last position), so
the prompts must keep every step's top-2 gap >= MIN_TOP2_GAP; the test checks that
precondition instead of assuming it.  "What is 12 times 7?" breaks it (a 0.007 tie at step
7): there the private run follows the float twins of the approximations token for token,
which the last test checks.
"""

from __future__ import annotations

import pytest
import torch

from veil.nn.bert import normalize
from veil.nn.demo import chat_ids
from veil.nn.private import PrivateModel

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome, I loved every minute of it!",
    "Quantum computers factor integers with Shor's algorithm.",
    "¿Dónde está la biblioteca?",
    "The stock market fell 3% on Tuesday after the announcement.",
    "cats",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Error 404: the requested page could not be found on this server.",
]
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me a synonym for happy.",
    "Name three primary colors.",
]
NEAR_TIE_PROMPT = "What is 12 times 7?"
NEW_TOKENS = 8
MIN_TOP2_GAP = 0.03


@torch.no_grad()
def test_minilm_private_embeddings_have_cosine_at_least_0999(minilm):
    hf, tokenizer = minilm
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    weights = enc["attention_mask"][:, :, None].float()
    expected = normalize((hf(**enc).last_hidden_state * weights).sum(1) / weights.sum(1)).double()

    result = PrivateModel.from_hf(hf).sentence_embedding(
        enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    )
    cosines = (normalize(result.output) * expected).sum(-1)
    print(f"MiniLM private vs HF cosines: {[round(c, 6) for c in cosines.tolist()]}")
    assert (cosines >= 0.999).all(), cosines


def _private_smollm2_matches(smollm2, prompt: str) -> None:
    hf, tokenizer = smollm2
    ids = chat_ids(tokenizer, prompt)
    plain = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
        output_scores=True, return_dict_in_generate=True,
    )
    expected = plain.sequences[0, ids.shape[1]:]
    gaps = [float(step[0].topk(2).values[0] - step[0].topk(2).values[1]) for step in plain.scores]
    assert min(gaps) >= MIN_TOP2_GAP, f"prompt {prompt!r} has a near-tie in plaintext: {gaps}"
    private = PrivateModel.from_hf(hf)
    tokens = private.generate(ids, max_new_tokens=NEW_TOKENS).output[0]
    logits = private.logits(ids, last_only=True).output[0]
    plain_logits = hf(ids).logits[0, -1].double()
    error = (logits - plain_logits).abs().max().item()
    print(f"SmolLM2 {prompt!r}: last-position logits max abs error {error:.3e}; "
          f"private {tokens.tolist()} vs plaintext {expected.tolist()}")
    assert torch.equal(tokens, expected)
    assert logits.argmax() == plain_logits.argmax()
    assert error <= 0.1, f"prompt {prompt!r}: last-position logits max abs error {error:.3e}"


@torch.no_grad()
def test_smollm2_private_generation_first_prompt(smollm2):
    _private_smollm2_matches(smollm2, PROMPTS[0])


@pytest.mark.slow
@torch.no_grad()
@pytest.mark.parametrize("prompt", PROMPTS[1:])
def test_smollm2_private_generation_other_prompts(smollm2, prompt):
    _private_smollm2_matches(smollm2, prompt)


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_near_tie_follows_the_float_twins(smollm2):
    """Where plaintext nearly ties, the private run still matches its float twin exactly."""
    from veil.nn.backend import ApproxBackend
    from veil.nn.generate import generate
    from veil.nn.llama import LlamaForCausalLM

    hf, tokenizer = smollm2
    ids = chat_ids(tokenizer, NEAR_TIE_PROMPT)
    twins = ApproxBackend.puma()
    expected = torch.stack(generate(LlamaForCausalLM.from_hf(hf), twins, ids, NEW_TOKENS), dim=-1)[0]
    tokens = PrivateModel.from_hf(hf).generate(ids, max_new_tokens=NEW_TOKENS).output[0]
    assert torch.equal(tokens, expected)
