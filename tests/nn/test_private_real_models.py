"""Private inference of the bundled real models against Hugging Face (issue 5's bounds).

- all-MiniLM-L6-v2: mean-pooled, normalised sentence embeddings from private inference
  have cosine >= 0.999 with Hugging Face's, for each of 8 varied sentences.
- SmolLM2-135M-Instruct: the first 8 greedily generated tokens under private inference
  equal plaintext greedy generation; the last-position logits' max abs error is reported.
  One prompt runs by default (a bounded subset for CI); all four are marked slow.
"""

from __future__ import annotations

import pytest
import torch

from nn.bert import normalize
from nn.demo import chat_ids
from nn.private import PrivateModel

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
    "What is 12 times 7?",
    "Name three primary colors.",
]
NEW_TOKENS = 8


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
    expected = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False
    )[0, ids.shape[1]:]
    private = PrivateModel.from_hf(hf)
    tokens = private.generate(ids, max_new_tokens=NEW_TOKENS).output[0]
    logits = private.logits(ids, last_only=True).output[0]
    plain_logits = hf(ids).logits[0, -1].double()
    error = (logits - plain_logits).abs().max().item()
    print(f"SmolLM2 {prompt!r}: last-position logits max abs error {error:.3e}; "
          f"private {tokens.tolist()} vs plaintext {expected.tolist()}")
    assert torch.equal(tokens, expected)
    assert logits.argmax() == plain_logits.argmax()


@torch.no_grad()
def test_smollm2_private_generation_first_prompt(smollm2):
    _private_smollm2_matches(smollm2, PROMPTS[0])


@pytest.mark.slow
@torch.no_grad()
@pytest.mark.parametrize("prompt", PROMPTS[1:])
def test_smollm2_private_generation_other_prompts(smollm2, prompt):
    _private_smollm2_matches(smollm2, prompt)
