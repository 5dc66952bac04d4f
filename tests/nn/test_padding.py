"""Left-padded decoder batches: every row gets what its prompt gets alone, in MPC and in plaintext."""

from __future__ import annotations

import pytest
import torch

from tests.nn.test_mpc import VOCAB, _gpt2, _llama
from veil.nn.backend import ExactBackend
from veil.nn.generate import generate
from veil.nn.gpt2 import GPT2LMHeadModel
from veil.nn.llama import LlamaForCausalLM
from veil.nn.padding import as_batch, check_left_padded, left_pad
from veil.nn.private import PrivateModel

LENGTHS = (5, 2, 4)
NEW_TOKENS = 3
LOGIT_BOUND = 2e-3
"""Padded vs unpadded private logits of the tiny models (f = 18; measured at most 3e-4)."""

FAMILIES = pytest.mark.parametrize(
    ("make_hf", "family", "seed"),
    [(_gpt2, GPT2LMHeadModel, 5), (_llama, LlamaForCausalLM, 1)],
    ids=["gpt2", "llama"],
)


def _prompts() -> list[list[int]]:
    return [torch.randint(0, VOCAB, (n,)).tolist() for n in LENGTHS]


def _private_batch(make_hf, seed: int) -> tuple[PrivateModel, list[list[int]], torch.Tensor, torch.Tensor]:
    """The seeded model's weights shared, and its prompts left padded."""
    torch.manual_seed(seed)
    private = PrivateModel.from_hf(make_hf())
    prompts = _prompts()
    return private, prompts, *left_pad(prompts)


def test_left_pad_puts_every_prompt_at_the_right_end():
    ids, mask = left_pad([[7, 8, 9], [4]], pad_id=1)
    assert ids.tolist() == [[7, 8, 9], [1, 1, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_a_list_of_prompts_is_padded_only_when_their_lengths_differ():
    ids, mask = as_batch([[7, 8, 9], [4]])
    assert ids.tolist() == [[7, 8, 9], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = as_batch([[1, 2], [3, 4]])
    assert ids.tolist() == [[1, 2], [3, 4]] and mask is None


def test_a_mask_that_is_not_left_padded_is_refused_with_its_row():
    with pytest.raises(ValueError, match=r"row 1 is not left padded.*\[1, 1, 0\]"):
        check_left_padded(torch.tensor([[1, 1, 1], [1, 1, 0]]), (2, 3))
    with pytest.raises(ValueError, match=r"shape \(2, 2\), the ids \(2, 3\)"):
        check_left_padded(torch.ones(2, 2, dtype=torch.long), (2, 3))


@torch.no_grad()
@FAMILIES
def test_plaintext_batch_rows_match_each_prompt_alone_and_transformers(make_hf, family, seed):
    torch.manual_seed(seed)
    hf = make_hf()
    model = family.from_hf(hf)
    prompts = _prompts()
    ids, mask = left_pad(prompts)

    batch = torch.stack(generate(model, ExactBackend(), ids, NEW_TOKENS, attention_mask=mask), -1)
    for row, prompt in enumerate(prompts):
        alone = generate(model, ExactBackend(), torch.tensor([prompt]), NEW_TOKENS)
        assert batch[row].tolist() == torch.stack(alone, -1)[0].tolist()
    reference = hf.generate(
        ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
    )
    assert torch.equal(batch, reference[:, -NEW_TOKENS:])


@torch.no_grad()
@FAMILIES
def test_private_batch_rows_match_each_prompt_alone(make_hf, family, seed):
    """One pass over the weight shares for the batch; greedy tokens identical per row."""
    private, prompts, ids, mask = _private_batch(make_hf, seed)
    tokens = private.generate(ids, NEW_TOKENS, attention_mask=mask).output
    for row, prompt in enumerate(prompts):
        alone = private.generate(torch.tensor([prompt]), NEW_TOKENS).output
        assert tokens[row].tolist() == alone[0].tolist()


@torch.no_grad()
@FAMILIES
def test_private_padded_logits_are_within_the_fixed_point_bound_of_the_prompt_alone(make_hf, family, seed):
    """Padding changes only the softmax's row length (its reciprocal's window): fixed-point noise."""
    private, prompts, ids, mask = _private_batch(make_hf, seed)
    logits = private.logits(ids, attention_mask=mask).output
    for row, prompt in enumerate(prompts):
        alone = private.logits(torch.tensor([prompt])).output[0]
        assert (logits[row, -len(prompt):] - alone).abs().max() < LOGIT_BOUND
