"""Embedding (secret ids -> exact table rows) and secret argmax (one-hot and index)."""

import torch

from tests.protocols.approx_helpers import run_protocol
from veil.protocols.approx.argmax import argmax, argmax_twin
from veil.protocols.approx.embedding import embedding, embedding_twin


def test_embedding_rows_are_exact():
    """Vocab 1000 (H = 5, L = 5 bits), ids at both ends and around the split: exact rows."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(1000, 16, generator=g, dtype=torch.float64)
    ids = torch.tensor([[0, 1, 31, 32, 33], [511, 512, 998, 999, 500]])
    y, traffic = run_protocol(embedding, ids, table)
    assert torch.equal(y, embedding_twin(ids, table))
    # A2B of the low 10 bits (reshare 1, generate 1, 4 prefix levels), AND-reduce of the
    # 5-bit halves 3, B2A 1, the outer product 1, the matmul 1 (a 64-bit A2B: 14)
    assert traffic.depth == 12


def test_embedding_odd_vocab_width():
    g = torch.Generator().manual_seed(1)
    table = torch.randn(5, 3, generator=g, dtype=torch.float64)
    ids = torch.tensor([0, 4, 2, 3, 1])
    y, _ = run_protocol(embedding, ids, table)
    assert torch.equal(y, embedding_twin(ids, table))


def test_embedding_out_of_range_ids_as_documented():
    """Vocab 10 (B = 4 bits): an id is read mod 16, a row if below 10, else a zero row."""
    g = torch.Generator().manual_seed(3)
    table = torch.randn(10, 3, generator=g, dtype=torch.float64)
    ids = torch.tensor([3 + 16, 3 + 2**40, 10, -1, 12])
    y, _ = run_protocol(embedding, ids, table)
    rows = embedding_twin(torch.tensor([3, 3]), table)
    assert torch.equal(y[:2], rows)
    assert torch.equal(y[2:], torch.zeros(3, 3, dtype=torch.float64))


def test_argmax_onehot_and_index():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3000, generator=g, dtype=torch.float64)
    x[1, 7] = x[1, 2900] = 10.0  # a tie goes to the lower index
    (onehot, index), traffic = run_protocol(argmax, x)
    expected_onehot, expected_index = argmax_twin(x)
    assert torch.equal(index, expected_index)
    assert torch.equal(onehot, expected_onehot)
    assert traffic.rounds <= 12 * 11 + 11


def test_argmax_onehot_feeds_embedding_exactly():
    """Greedy decoding's next-token embedding: argmax one-hot @ table, no truncation."""
    from veil.protocols.approx.embedding import embedding_onehot

    g = torch.Generator().manual_seed(3)
    table = torch.randn(64, 8, generator=g, dtype=torch.float64)
    logits = torch.randn(2, 64, generator=g, dtype=torch.float64)

    def next_rows(logits, table):
        onehot, _ = argmax(logits)
        return embedding_onehot(onehot, table)

    y, _ = run_protocol(next_rows, logits, table)
    assert torch.equal(y, embedding_twin(logits.argmax(-1), table))
