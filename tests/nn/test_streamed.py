"""A model streamed from the parties' stores computes exactly what the resident model does."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter

import pytest
import torch
import transformers

from veil.mpc.fixedpoint import FixedPoint
from veil.nn.private import import_hf
from veil.nn.streamed import StreamedPrivateModel, deal_to_stores, weight_specs
from veil.parties.store import ShareStore


@pytest.fixture
def same_protocol_randomness(monkeypatch):
    """Every party's (and the client's) PRG keys fixed by thread and draw number, so two
    runs of one request draw the same randomness and can be compared bit for bit."""
    draws: Counter = Counter()
    lock = threading.Lock()

    def fixed_key() -> bytes:
        name = threading.current_thread().name
        with lock:
            draws[name] += 1
            count = draws[name]
        return hashlib.sha256(f"{name}:{count}".encode()).digest()[:16]

    def restart() -> None:
        draws.clear()

    monkeypatch.setattr("veil.mpc.party.new_key", fixed_key)
    monkeypatch.setattr("veil.mpc.sharing.new_key", fixed_key)
    return restart


def _tiny_llama(tied: bool):
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied,
        initializer_range=0.2,
    )
    torch.manual_seed(4)  # untied: every greedy step's top-2 logit gap >= 0.2 (test below)
    return transformers.LlamaForCausalLM(config).eval()


def _streamed(tmp_path, hf, budget: int) -> StreamedPrivateModel:
    fxp = FixedPoint()
    model = import_hf(hf)
    floats = {name: value for name, value in model.named_params()}
    skeleton = weight_specs(model, fxp)
    stores = [ShareStore(tmp_path / f"party{r}") for r in range(3)]
    writers = [store.begin_model("tiny", {}) for store in stores]
    deal_to_stores(skeleton, lambda spec: floats[spec.name], writers, fxp)
    for writer in writers:
        writer.commit()
    return StreamedPrivateModel(skeleton, [s.reader("tiny") for s in stores], fxp, budget_bytes=budget)


@pytest.mark.parametrize("tied", [False, True])
def test_streamed_generation_is_bit_identical_to_the_resident_model(
    tmp_path, same_protocol_randomness, tied: bool
) -> None:
    hf = _tiny_llama(tied)
    # A budget below one weight: every weight is loaded alone, just in time.
    streamed = _streamed(tmp_path, hf, budget=1)
    ids = torch.tensor([[3, 17, 42, 8, 60]])

    same_protocol_randomness()
    got = streamed.generate(ids, 3)
    same_protocol_randomness()
    want = streamed.resident().generate(ids, 3)
    assert torch.equal(got.output, want.output)
    assert got.depth == want.depth and got.max_bytes_sent == want.max_bytes_sent

    same_protocol_randomness()
    got_logits = streamed.logits(ids)
    same_protocol_randomness()
    want_logits = streamed.resident().logits(ids)
    assert torch.equal(got_logits.output, want_logits.output)

    # Every party read every weight of every forward pass from its store.
    weights = len(list(streamed._specs))
    for stats in streamed.prefetch_stats:
        assert stats.loads >= weights


def test_streamed_model_matches_plaintext_greedy_tokens(tmp_path) -> None:
    hf = _tiny_llama(tied=False)
    streamed = _streamed(tmp_path, hf, budget=1 << 20)
    ids = torch.tensor([[3, 17, 42, 8, 60]])
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=4, do_sample=False, output_scores=True,
                          return_dict_in_generate=True)
    top2 = torch.stack([scores[0].topk(2).values for scores in out.scores])
    assert (top2[:, 0] - top2[:, 1]).min() >= 0.2  # well above the private logits' error
    assert torch.equal(streamed.generate(ids, 4).output, out.sequences[:, ids.shape[1]:])
