"""BERT and MiniLM: our model with the exact backend against Hugging Face."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from veil.nn.backend import ExactBackend
from veil.nn.bert import BertForSequenceClassification, BertModel, normalize, sentence_embedding

VOCAB = 120
WIDTH = 128  # the MLP's inner size, the longest dot product
DEPTH = 2


def _hf_config(**overrides) -> transformers.BertConfig:
    settings = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "num_hidden_layers": DEPTH,
        "num_attention_heads": 4,
        "intermediate_size": WIDTH,
        "max_position_embeddings": 32,
        "initializer_range": 0.2,
    }
    return transformers.BertConfig(**(settings | overrides))


@pytest.fixture(scope="module")
def hf_bert(perturb_norms) -> transformers.BertModel:
    torch.manual_seed(0)
    return perturb_norms(transformers.BertModel(_hf_config()).eval()).double()


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    """Two sequences, the second padded after 5 tokens, with two segments."""
    torch.manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (2, 9))
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, 5:] = 0
    token_type_ids = torch.zeros(2, 9, dtype=torch.long)
    token_type_ids[:, 4:] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }


@torch.no_grad()
def test_bert_matches_hf_with_padding_and_segments(hf_bert, batch, matches):
    ref = hf_bert(**batch)
    model = BertModel.from_hf(hf_bert)
    ops = ExactBackend()
    hidden = model(ops, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    matches(hidden, ref.last_hidden_state, width=WIDTH, depth=DEPTH)
    matches(model.pool(ops, hidden), ref.pooler_output, width=WIDTH, depth=DEPTH + 1)


@torch.no_grad()
def test_padding_does_not_change_real_tokens(hf_bert, batch, matches):
    model = BertModel.from_hf(hf_bert)
    ops = ExactBackend()
    padded = model(ops, batch["input_ids"], batch["attention_mask"])
    alone = model(ops, batch["input_ids"][1:, :5], batch["attention_mask"][1:, :5])
    matches(padded[1:, :5], alone, width=WIDTH, depth=DEPTH)


@torch.no_grad()
def test_tanh_gelu_variant_matches_hf(batch, perturb_norms, matches):
    torch.manual_seed(2)
    hf = perturb_norms(transformers.BertModel(_hf_config(hidden_act="gelu_new")).eval()).double()
    ref = hf(**batch).last_hidden_state
    ours = BertModel.from_hf(hf)(
        ExactBackend(), batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    matches(ours, ref, width=WIDTH, depth=DEPTH)


@torch.no_grad()
def test_sequence_classification_matches_hf(batch, perturb_norms, matches):
    torch.manual_seed(3)
    hf = perturb_norms(transformers.BertForSequenceClassification(_hf_config(num_labels=3)))
    hf.eval().double()
    model = BertForSequenceClassification.from_hf(hf)
    logits = model(
        ExactBackend(), batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    matches(logits, hf(**batch).logits, width=WIDTH, depth=DEPTH + 2)


def test_pooler_can_be_dropped(hf_bert):
    names = [name for name, _ in BertModel.from_hf(hf_bert, pooler=False).named_params()]
    assert not any(name.startswith("pooler") for name in names)


SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A monkey is playing drums.",
]


@torch.no_grad()
def test_minilm_sentence_embeddings_match_sentence_transformers_recipe(minilm):
    hf, tokenizer = minilm
    hf = copy.deepcopy(hf).double()
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    hidden = hf(**enc).last_hidden_state
    weights = enc["attention_mask"][:, :, None].double()
    expected = normalize((hidden * weights).sum(1) / weights.sum(1))

    model = BertModel.from_hf(hf, pooler=False)
    ops = ExactBackend()
    ours = normalize(
        ops.reveal(
            sentence_embedding(
                model,
                ops,
                ops.private_ids(enc["input_ids"]),
                enc["attention_mask"],
                enc["token_type_ids"],
            )
        )
    )
    # The structure is checked to rounding (1e-14) by the random-config tests above.  The real
    # model in float64 differs from Hugging Face by about 2e-8, which is not rounding (one-ulp
    # weight perturbations move it by 4e-15); 1e-6 still exposes any real mistake (>= 1e-3).
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    similarity = ours @ ours.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[0, 1] > similarity[0, 3]
