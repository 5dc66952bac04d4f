"""Module plumbing and the plaintext backends."""

from __future__ import annotations

import io

import torch

from veil.nn.backend import ApproxBackend, ExactBackend
from veil.nn.modules import Embedding, Linear, Module, causal_mask, padding_mask
from veil.nn.progress import Progress, tracked


class _Tied(Module):
    def __init__(self):
        table = torch.randn(5, 3)
        self.embed = Embedding(table)
        self.heads = [Linear(torch.randn(3, 2), torch.zeros(2)), Linear(table, None)]


def test_named_params_walks_children_and_lists():
    names = [name for name, _ in _Tied().named_params()]
    assert names == ["embed.weight", "heads.0.weight", "heads.0.bias", "heads.1.weight"]


def test_map_params_maps_every_parameter_once_and_keeps_ties():
    model = _Tied()
    calls = []

    def fn(t: torch.Tensor) -> tuple[str, torch.Tensor]:
        calls.append(t)
        return ("mapped", t)

    assert model.map_params(fn) is model
    assert len(calls) == 3
    assert all(value[0] == "mapped" for _, value in model.named_params())
    assert model.embed.weight is model.heads[1].weight
    assert model.heads[1].bias is None


def test_map_params_visits_a_module_reachable_twice_once():
    model = _Tied()
    model.again = model.embed
    calls = []
    model.map_params(lambda t: calls.append(t) or ("mapped", t))
    assert len(calls) == 3
    assert model.again.weight[0] == "mapped"
    assert isinstance(model.again.weight[1], torch.Tensor), "mapped twice"


def test_causal_mask_with_past():
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, past=2), expected)
    assert torch.equal(causal_mask(3), torch.ones(3, 3, dtype=torch.bool).tril())


def test_padding_mask_hides_padded_keys():
    mask = padding_mask(torch.tensor([[1, 1, 0]]))
    assert mask.shape == (1, 1, 1, 3)
    assert mask.flatten().tolist() == [True, True, False]


def test_exact_softmax_mask_gives_zero_probability():
    x = torch.randn(2, 4)
    mask = torch.tensor([True, True, False, True])
    p = ExactBackend().softmax(x, mask=mask)
    assert torch.all(p[:, 2] == 0)
    torch.testing.assert_close(p.sum(-1), torch.ones(2))


def test_approx_backend_without_twins_equals_exact():
    torch.manual_seed(0)
    exact, approx = ExactBackend(), ApproxBackend()
    x = torch.randn(2, 3, 8) * 3
    w, b = torch.randn(8), torch.randn(8)
    mask = torch.rand(2, 3, 8) > 0.3
    for name, args in [
        ("softmax", (x, -1, mask)),
        ("attend", (x, torch.randn(2, 8, 5), mask)),
        ("layernorm", (x, w, b, 1e-5)),
        ("rmsnorm", (x, w, 1e-6)),
        ("gelu", (x,)),
        ("silu", (x,)),
        ("tanh", (x,)),
    ]:
        torch.testing.assert_close(getattr(approx, name)(*args), getattr(exact, name)(*args))


def test_attend_is_softmax_then_values_and_puma_overrides_keep_it_consistent():
    """attend = softmax(scores, mask) @ v exactly; with PUMA's twins it is the twin of
    (e @ v) / s; an override of softmax alone (an error budget) also drives attention."""
    torch.manual_seed(1)
    x, v = torch.randn(2, 3, 8) * 3, torch.randn(2, 8, 5)
    mask = torch.rand(2, 3, 8) > 0.3
    mask[..., 0] = True
    exact = ExactBackend()
    torch.testing.assert_close(exact.attend(x, v, mask), exact.softmax(x, -1, mask) @ v)
    puma = ApproxBackend.puma()
    torch.testing.assert_close(puma.attend(x, v, mask), exact.attend(x, v, mask), atol=1e-3, rtol=0)
    assert not torch.equal(puma.attend(x, v, mask), exact.attend(x, v, mask))
    exact_softmax = ApproxBackend.puma(softmax=None)
    torch.testing.assert_close(exact_softmax.attend(x, v, mask), exact.attend(x, v, mask))


def test_approx_backend_calls_its_twins_and_keeps_the_dtype():
    calls = []

    def twin(name):
        def fn(x, *rest):
            calls.append((name, len(rest)))
            return x.to(torch.float64)

        return fn

    ops = ApproxBackend(
        **{name: twin(name) for name in ("softmax", "layernorm", "rmsnorm", "gelu")}
    )
    x = torch.randn(2, 4)
    outputs = [
        ops.softmax(x, mask=torch.ones(4, dtype=torch.bool)),
        ops.layernorm(x, torch.ones(4), torch.zeros(4), 1e-5),
        ops.rmsnorm(x, torch.ones(4), 1e-5),
        ops.gelu(x, approximate="tanh"),
    ]
    assert calls == [("softmax", 1), ("layernorm", 3), ("rmsnorm", 2), ("gelu", 0)]
    assert all(out.dtype == torch.float32 for out in outputs)


def test_puma_backend_is_close_to_exact_on_typical_inputs():
    """Range: N(0, 2^2) activations; bounds: the twins' documented errors (SiLU's 2.7e-3 at
    |x| = 8, GeLU's 0.02 at the segment joins; 5e-3 for the rest)."""
    torch.manual_seed(0)
    exact, puma = ExactBackend(), ApproxBackend.puma()
    x = torch.randn(4, 16, 32) * 2
    w, b = 1 + 0.1 * torch.randn(32), 0.1 * torch.randn(32)
    mask = torch.ones(16, 32, dtype=torch.bool).tril()
    for name, args, bound in [
        ("softmax", (x, -1, mask), 5e-3),
        ("layernorm", (x, w, b, 1e-5), 5e-3),
        ("rmsnorm", (x, w, 1e-6), 5e-3),
        ("gelu", (x,), 0.02),
        ("silu", (x,), 2.7e-3),
        ("tanh", (x,), 5e-3),
    ]:
        error = (getattr(puma, name)(*args) - getattr(exact, name)(*args)).abs().max()
        assert error <= bound, (name, error)


def test_argmax_returns_onehot_and_index():
    onehot, index = ExactBackend().argmax(torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]]))
    assert index.tolist() == [1, 0]
    assert onehot.tolist() == [[0, 1, 0], [1, 0, 0]]


def test_progress_counts_to_total():
    stream = io.StringIO()
    progress = Progress(3, "layers", stream=stream)
    assert list(tracked("abc", progress)) == ["a", "b", "c"]
    text = stream.getvalue()
    assert text.endswith("\n")
    assert "layers" in text and "3/3" in text
    assert "step/s" in text or "s/step" in text  # tqdm's rate: the bar is tqdm's, not ours


def test_progress_closes_at_total_and_ignores_extra_steps():
    stream = io.StringIO()
    progress = Progress(2, "tokens", stream=stream)
    progress.advance(5)
    assert progress.done == 2
    closed = stream.getvalue()
    progress.advance()
    assert stream.getvalue() == closed
