"""LLaMA-7B's shapes with seeded weights, and their shares regenerated instead of stored."""

from __future__ import annotations

import dataclasses

import torch

from veil.mpc.fixedpoint import FixedPoint
from veil.nn.backend import ExactBackend
from veil.nn.generate import generate
from veil.nn.seeded_weights import (
    AMPLITUDE_BITS,
    LLAMA_7B,
    RegeneratedShares,
    SeededLlamaWeights,
    llama_skeleton,
    parameter_count,
)
from veil.nn.streamed import StreamedPrivateModel, specs_in_order
from veil.nn.streamed_plain import streamed_plain_model

FXP = FixedPoint()
TINY = dataclasses.replace(
    LLAMA_7B, vocab_size=128, hidden_size=64, n_layer=2, n_head=4, n_kv_head=4, head_dim=16,
    intermediate_size=96,
)
MIN_GAP = 0.1
"""Top-2 logit gap every compared greedy step must have: several times the private logits'
error on this model (2e-2 to 4e-2 here), so equal tokens are not a coin toss."""


def test_skeleton_has_llama_7b_shapes_and_parameter_count() -> None:
    skeleton = llama_skeleton(LLAMA_7B, FXP)
    shapes = {spec.name: spec.shape for spec in specs_in_order(skeleton)}
    assert parameter_count(skeleton) == 6_738_149_376  # LLaMA-7B without its norm gains (266k)
    assert shapes["embed.weight"] == (32000, 4096)
    assert shapes["lm_head.weight"] == (4096, 32000)
    assert shapes["blocks.31.attn.qkv.weight"] == (4096, 3 * 4096)
    assert shapes["blocks.31.mlp.gate_up.weight"] == (4096, 2 * 11008)
    assert shapes["blocks.31.mlp.down.weight"] == (11008, 4096)
    assert len(shapes) == 2 + 4 * 32


def test_seeded_weights_are_reproducible_bounded_and_exact_in_float() -> None:
    skeleton = llama_skeleton(TINY, FXP)
    specs = specs_in_order(skeleton)
    weights = SeededLlamaWeights(3, TINY, FXP)
    first, again = weights.ring(specs[1]), SeededLlamaWeights(3, TINY, FXP).ring(specs[1])
    assert torch.equal(first, again)
    assert not torch.equal(first, SeededLlamaWeights(4, TINY, FXP).ring(specs[1]))
    assert first.abs().max() < 2 ** (AMPLITUDE_BITS - 1)
    assert 0.01 < weights.float(specs[0]).std() < 0.025
    assert torch.equal(FXP.encode(weights.float(specs[2])), weights.ring(specs[2]))


def test_regenerated_shares_are_replicated_and_open_to_the_weights() -> None:
    skeleton = llama_skeleton(TINY, FXP)
    weights = SeededLlamaWeights(0, TINY, FXP)
    shares = RegeneratedShares(weights, specs_in_order(skeleton))
    sources = [shares.source(r) for r in range(3)]
    for spec in specs_in_order(skeleton):
        pairs = [source.load_pair(spec.name) for source in sources]
        for r in range(3):
            assert torch.equal(pairs[r][1], pairs[(r + 1) % 3][0])
        assert torch.equal(pairs[0][0] + pairs[0][1] + pairs[1][1], weights.ring(spec))
        assert not torch.equal(pairs[1][1], weights.ring(spec))  # x_2 is masked


def test_private_generation_from_regenerated_shares_matches_the_streamed_plaintext() -> None:
    skeleton = llama_skeleton(TINY, FXP)
    weights = SeededLlamaWeights(2, TINY, FXP)  # seed 2: every step's top-2 gap >= 0.104
    shares = RegeneratedShares(weights, specs_in_order(skeleton))
    ids = torch.tensor([[5, 77, 12, 100]])
    with streamed_plain_model(skeleton, weights.float, budget_bytes=1) as (plain, _):
        want = torch.stack(generate(plain, ExactBackend(), ids, 3), dim=-1)
        context = torch.cat([ids, want], dim=1)
        logits = plain(ExactBackend(), context)[0, ids.shape[1] - 1 : -1]
    gaps = logits.topk(2).values
    assert (gaps[:, 0] - gaps[:, 1]).min() >= MIN_GAP, "pick a seed with clear greedy steps"

    # A budget of one byte: every weight is loaded alone, just in time.
    private = StreamedPrivateModel(skeleton, [shares.source(r) for r in range(3)], FXP, budget_bytes=1)
    assert torch.equal(private.generate(ids, 3).output, want)
