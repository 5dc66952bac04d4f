"""The dry-run estimate against the counters of real in-memory runs of tiny seeded models.

The models have 3 layers, so that the estimate's extrapolation from its 1- and 2-layer dry
runs is checked too.  Bound: equal (the issue allows 5%; the dry run sends the same messages).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from veil.nn.estimate import LAN, WAN, Estimate, Network, estimate, request
from veil.nn.private import PrivateModel
from veil.parties.cli import main

VOCAB = 50
LAYERS = 3


def _gpt2() -> transformers.GPT2LMHeadModel:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=LAYERS, n_head=4,
        bos_token_id=None, eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def _llama() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _bert() -> transformers.BertModel:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16,
    )
    return transformers.BertModel(config, add_pooling_layer=False).eval()


@torch.no_grad()
@pytest.mark.parametrize(
    ("make_hf", "batch", "seq", "new_tokens"),
    [(_gpt2, 2, 5, 3), (_llama, 1, 4, 2), (_gpt2, 1, 6, 0), (_bert, 2, 6, 0)],
    ids=["gpt2-generate", "llama-generate", "gpt2-logits", "bert-embedding"],
)
def test_estimate_equals_the_measured_counters(make_hf, batch, seq, new_tokens):
    torch.manual_seed(0)
    hf = make_hf()
    est = estimate(hf, seq=seq, new_tokens=new_tokens, batch=batch)
    measured = request(PrivateModel.from_hf(hf), batch, seq, new_tokens)

    assert est.bytes_sent == tuple(r.traffic.bytes_sent for r in measured.reports)
    assert est.depth == measured.depth
    assert est.send_steps == measured.max_rounds


def test_network_time_is_rounds_times_rtt_plus_bytes_over_bandwidth():
    est = Estimate("m", 1, 8, 0, (10**9, 2 * 10**9, 10**9), 1000, 800, 0.1)
    assert est.seconds(LAN) == pytest.approx(1000 * 1e-3 + 2e9 * 8 / 5e9)
    assert est.seconds(WAN) == pytest.approx(1000 * 40e-3 + 2e9 * 8 / 100e6)


def test_requests_that_cannot_run_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match="unknown model 'gpt3'"):
        estimate("gpt3", seq=4)
    with pytest.raises(ValueError, match="BertModel is an encoder"):
        estimate(_bert(), seq=4, new_tokens=2)
    with pytest.raises(ValueError, match="got 0, 1, 0"):
        estimate(_gpt2(), seq=0)


def test_cli_prints_the_estimate_of_a_named_model(capsys):
    """`veil estimate` on the bundled MiniLM: the same counters as the Python function."""
    assert main(["estimate", "--model", "minilm", "--seq", "6", "--rtt-ms", "10", "--bandwidth", "1000"]) == 0
    out = capsys.readouterr().out
    est = estimate("minilm", seq=6)
    assert f"critical-path rounds: {est.depth} ({est.send_steps} send steps)" in out
    assert f"P1 {est.bytes_sent[1] / 1e6:.1f} MB" in out
    given = Network("given", 10e-3, 1e9)
    assert f"given (10 ms, 1 Gbit/s) {est.seconds(given):.2f} s" in out


@pytest.mark.parametrize("make", [_gpt2, _llama])
def test_pre_norms_fuse_the_matmul_they_feed(monkeypatch, make):
    """Each pre-norm computes the projection it feeds inside itself (veil.nn.modules._project):
    2 critical-path rounds fewer per norm, two norms per layer, on each of the 2 passes (the
    prompt, then the first new token; the second new token needs no pass)."""
    from veil.nn import modules

    hf = make()
    # RoPE beside the bracket needs the fused projection: measured on its own below.
    monkeypatch.setattr(modules.Attention, "_rotary_in_norm", lambda self, norm, rope: None)
    fused = estimate(hf, seq=4, new_tokens=2)
    monkeypatch.setattr(
        modules, "_project", lambda ops, x, linear, norm: linear(x if norm is None else norm(ops, x))
    )
    apart = estimate(hf, seq=4, new_tokens=2)
    assert apart.depth - fused.depth == 2 * 2 * LAYERS * 2


def test_rope_rides_beside_the_pre_norms_bracket(monkeypatch):
    """LLaMA's attention pre-norm rotates the query and key columns of its QKV product beside
    its bracket (veil.protocols.approx.rotary): 2 critical-path rounds fewer per layer on each
    of the 2 passes than rotating after the projection."""
    from veil.nn import modules

    hf = _llama()
    fused = estimate(hf, seq=4, new_tokens=2)
    monkeypatch.setattr(modules.Attention, "_rotary_in_norm", lambda self, norm, rope: None)
    apart = estimate(hf, seq=4, new_tokens=2)
    assert apart.depth - fused.depth == 2 * LAYERS * 2


def test_post_norms_make_the_next_projection(monkeypatch):
    """BERT's embedding norm and every layer's norms but the last make the projection they
    feed inside themselves (LayerNorm.projected): 2 critical-path rounds fewer for each of
    the 2 * LAYERS such norms."""
    from veil.nn import modules

    hf = _bert()
    fused = estimate(hf, seq=4)

    def apart(self, ops, x, then):
        y = self(ops, x)
        return y, then(y)

    monkeypatch.setattr(modules.LayerNorm, "projected", apart)
    assert estimate(hf, seq=4).depth - fused.depth == 2 * 2 * LAYERS
