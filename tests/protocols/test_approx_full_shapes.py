"""The shapes of issue 3 (BERT-base), end to end on shares.  Run with ``-m slow``."""

import pytest
import torch
import torch.nn.functional as F

from tests.protocols.approx_helpers import run_protocol
from veil.protocols.approx.argmax import argmax
from veil.protocols.approx.embedding import embedding
from veil.protocols.approx.gelu import gelu
from veil.protocols.approx.layernorm import layernorm
from veil.protocols.approx.softmax import softmax

pytestmark = pytest.mark.slow
CAUSAL = torch.tril(torch.ones(128, 128, dtype=torch.bool))


@pytest.mark.parametrize("mask", [None, CAUSAL], ids=["plain", "causal"])
def test_softmax_12x128x128_within_0_01(mask):
    """Logits ~ N(0, 3^2): max abs error <= 0.01 vs torch.softmax; < 160 rounds (SPU)."""
    x = (
        torch.randn(12, 128, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        * 3
    )
    y, traffic = run_protocol(softmax, x, mask=mask)
    reference = torch.softmax(x if mask is None else x.masked_fill(~mask, float("-inf")), -1)
    assert (y - reference).abs().max() <= 0.01
    assert traffic.rounds < 160


def test_layernorm_128x768_within_5e_3():
    """Per-row scales 10^U(-2, 2): max abs error <= 5e-3; < 55 rounds (SPU)."""
    g = torch.Generator().manual_seed(1)
    scale = torch.pow(10.0, torch.rand(128, 1, generator=g, dtype=torch.float64) * 4 - 2)
    x = torch.randn(128, 768, generator=g, dtype=torch.float64) * scale
    weight = 1 + 0.1 * torch.randn(768, generator=g, dtype=torch.float64)
    bias = 0.1 * torch.randn(768, generator=g, dtype=torch.float64)
    y, traffic = run_protocol(layernorm, x, weight, bias)
    assert (y - F.layer_norm(x, (768,), weight, bias, 1e-5)).abs().max() <= 5e-3
    assert traffic.rounds < 55


def test_gelu_128x768_within_0_02():
    """N(0, 3^2) activations: max abs error <= 0.02 vs erf-GeLU; < 55 rounds (SPU)."""
    x = torch.randn(128, 768, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    y, traffic = run_protocol(gelu, x)
    assert (y - F.gelu(x)).abs().max() <= 0.02
    assert traffic.rounds < 55


def test_embedding_128_tokens_of_30522x768_exact():
    g = torch.Generator().manual_seed(3)
    table = torch.randn(30522, 768, generator=g, dtype=torch.float64)
    ids = torch.cat([torch.tensor([0, 30521]), torch.randint(0, 30522, (126,), generator=g)])
    y, _ = run_protocol(embedding, ids, table)
    fxp_table = torch.round(table * 2**18) / 2**18
    assert torch.equal(y, fxp_table[ids])


def test_argmax_over_49152():
    x = torch.randn(2, 49152, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    (onehot, index), _ = run_protocol(argmax, x)
    assert torch.equal(index, x.argmax(-1))
    assert torch.equal(onehot.argmax(-1), x.argmax(-1)) and onehot.sum(-1).eq(1).all()
