"""The same model code on secret shares: tiny models through :class:`veil.nn.private.PrivateModel`."""

from __future__ import annotations

import pytest
import torch
import transformers

from veil.nn.backend import ApproxBackend, ExactBackend
from veil.nn.bert import BertForSequenceClassification
from veil.nn.generate import generate
from veil.nn.gpt2 import GPT2LMHeadModel
from veil.nn.llama import LlamaForCausalLM
from veil.nn.private import PrivateModel

VOCAB = 50


@torch.no_grad()
def test_bert_classifier_on_shares_matches_the_twins():
    """Bound: protocol vs float twin 1e-2 on the logits (twins' error excluded)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=3,
    )
    hf = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(0, VOCAB, (2, 6))
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    attention_mask[1, 4:] = 0

    logits = PrivateModel.from_hf(hf).logits(ids, attention_mask=attention_mask).output
    twin = BertForSequenceClassification.from_hf(hf)(ApproxBackend.puma(), ids, attention_mask)
    assert (logits - twin).abs().max() < 1e-2


def _gpt2() -> transformers.GPT2LMHeadModel:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def _llama() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return transformers.LlamaForCausalLM(config).eval()


# Seeds whose greedy steps all have a top-2 logit gap >= 0.18, well above the twins' logit
# error (about 0.04), so that the comparison with exact decoding is not a coin toss.
@torch.no_grad()
@pytest.mark.parametrize(
    ("make_hf", "family", "seed"),
    [(_gpt2, GPT2LMHeadModel, 5), (_llama, LlamaForCausalLM, 1)],
    ids=["gpt2", "llama"],
)
def test_private_greedy_generation_matches_plaintext(make_hf, family, seed):
    """Secret ids in, secret one-hot tokens fed back; only the chosen indices are opened."""
    torch.manual_seed(seed)
    hf = make_hf()
    prompt = torch.randint(0, VOCAB, (1, 5))

    tokens = PrivateModel.from_hf(hf).generate(prompt, max_new_tokens=4).output
    expected = torch.stack(generate(family.from_hf(hf), ExactBackend(), prompt, 4), dim=-1)
    assert torch.equal(tokens, expected)


def test_bad_token_ids_are_refused_by_the_client_before_sharing():
    torch.manual_seed(0)
    private = PrivateModel.from_hf(_gpt2())
    with pytest.raises(ValueError, match=r"token id 50 is outside the vocabulary \(0..49\)"):
        private.generate(torch.tensor([[1, 50]]), max_new_tokens=1)
    with pytest.raises(ValueError, match=r"token id -1 is outside the vocabulary"):
        private.logits(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"integer tensor \(batch, seq\)"):
        private.logits(torch.tensor([1, 2]))
