"""reciprocal and rsqrt: relative error <= 1e-3 over their documented ranges, and cost."""

import pytest
import torch

from tests.protocols.approx_helpers import on_grid, run_protocol
from veil.protocols.approx.bracket import power_of_two_bracket
from veil.protocols.approx.reciprocal import reciprocal, reciprocal_twin
from veil.protocols.approx.rsqrt import rsqrt, rsqrt_twin
from veil.protocols.approx.rsqrt_product import rsqrt_product, rsqrt_product_twin

RECIPROCAL_X = on_grid(torch.exp2(torch.linspace(-10, 7, 400, dtype=torch.float64)))
RSQRT_X = on_grid(torch.exp2(torch.linspace(-14, 13.99, 400, dtype=torch.float64)))


def test_reciprocal_twin_relative_error():
    """Range [2^-10, 2^7]: the iteration's 5.4e-5 plus rounding of the f-bit result."""
    xs = on_grid(torch.exp2(torch.linspace(-10, 7, 100001, dtype=torch.float64)))
    assert (reciprocal_twin(xs, frac_bits=None) * xs - 1).abs().max() <= 5.5e-5
    assert (reciprocal_twin(xs) * xs - 1).abs().max() <= 1e-3


def test_reciprocal_protocol_relative_error_and_cost():
    """Range [2^-10, 2^7] at f bits; to 2^10 with 4 extra result bits.  11 rounds."""
    y, traffic = run_protocol(reciprocal, RECIPROCAL_X)
    assert (y * RECIPROCAL_X - 1).abs().max() <= 1e-3
    assert ((y - reciprocal_twin(RECIPROCAL_X)) / y).abs().max() <= 1e-3
    assert traffic.depth == 11
    wide = on_grid(torch.exp2(torch.linspace(-10, 9.99, 200, dtype=torch.float64)))
    y, _ = run_protocol(reciprocal, wide, extra_bits=4)
    assert (y * wide - 1).abs().max() <= 1e-3


def test_reciprocal_fused_first_level_on_a_softmax_window():
    """Row sums in [1, 2^6) (softmax's window): x^2 beside the bracket, e0 and w0 2^-e in one
    truncation: 11 rounds (13 unfused); relative error within the iteration's 5.4e-5 plus a
    few ulp of e0 and of the f + 6-bit result (measured 5.6e-5), protocol vs twin 2e-5."""
    xs = on_grid(torch.exp2(torch.linspace(0, 5.999, 3001, dtype=torch.float64)))
    y, traffic = run_protocol(lambda x: reciprocal(x, 0, 6, 6), xs)
    assert traffic.depth == 11
    assert (y * xs - 1).abs().max() <= 1e-4
    assert ((y - reciprocal_twin(xs, 0, 6, 6)) * xs).abs().max() <= 2e-5
    _, unfused = run_protocol(lambda x: reciprocal(x, 0, 6, 6, bracket="bits"), xs)
    assert unfused.depth == 23


def test_reciprocal_of_a_row_sum_from_its_components():
    """Softmax's reciprocal: s as 3-out-of-3 components with 2f bits over [1, 2^6) and its
    ends; every bracket's Goldschmidt beside the bracket, then the select: 9 rounds (s and the
    candidates 2, the bracket 5 beside e0 2, [r1, e1] 2 and r2 2, the select 1).  Relative error
    within the iteration's 5.4e-5 plus a few ulp of the 26-bit iterates and of the f + 6-bit
    result; protocol vs twin a few ulp of the result."""
    from veil.protocols.approx.reciprocal_rows import reciprocal_of_sum, reciprocal_of_sum_twin

    ends = torch.tensor([1.0, 1.5, 2.0 - 2.0**-18, 2.0, 32.0, 63.99], dtype=torch.float64)
    xs = on_grid(torch.cat([ends, torch.exp2(torch.linspace(0, 5.999, 1001, dtype=torch.float64))]))

    def protocol(x):
        f = x.frac_bits
        return reciprocal_of_sum(x.party, x.data[0] << f, 2 * f, 0, 6, 6)[0]

    y, traffic = run_protocol(protocol, xs.reshape(-1, 1))
    y = y.reshape(-1)
    assert traffic.depth == 9
    assert (y * xs - 1).abs().max() <= 1e-4
    assert ((y - reciprocal_of_sum_twin(xs, 0, 6, 6)) * xs).abs().max() <= 2e-5


def test_rsqrt_twin_relative_error():
    """Range [2^-14, 2^14): the quartic's 8.2e-5 plus rounding of the f-bit result."""
    xs = on_grid(torch.exp2(torch.linspace(-14, 13.999, 100001, dtype=torch.float64)))
    assert (rsqrt_twin(xs, frac_bits=None) * xs.sqrt() - 1).abs().max() <= 8.3e-5
    assert (rsqrt_twin(xs) * xs.sqrt() - 1).abs().max() <= 5e-4


def test_rsqrt_protocol_relative_error_and_cost():
    """Range [2^-14, 2^14): relative error <= 1e-3; 20 rounds."""
    y, traffic = run_protocol(rsqrt, RSQRT_X)
    assert (y * RSQRT_X.sqrt() - 1).abs().max() <= 1e-3
    assert traffic.depth == 13


def test_rsqrt_public_scale_is_free():
    """scale folds into the public factor table: same cost, scale * rsqrt."""
    y, traffic = run_protocol(rsqrt, RSQRT_X, scale=27.7)
    assert (y * RSQRT_X.sqrt() / 27.7 - 1).abs().max() <= 1e-3
    assert traffic.depth == 13


@pytest.mark.parametrize("method", ["compare", "bits"])
def test_bracket_onehot_saturates_at_the_window_ends(method):
    """Window p in [f-3, f+3): values below land in p_0, above in p_{W-1}; both methods agree."""
    xs = on_grid(
        torch.tensor(
            [2.0**-6, 0.125, 0.2, 0.5, 1.0, 1.5, 3.9, 4.0, 7.99, 8.0, 1000.0], dtype=torch.float64
        )
    )
    positions = torch.arange(18 - 3, 18 + 3)
    onehot, _ = run_protocol(lambda x: power_of_two_bracket(x, positions, method), xs)
    _, e = torch.frexp(xs)  # x in [2^(e-1), 2^e): bracket p = f + e - 1
    expected = ((e - 1).clamp(-3, 2) + 3).to(torch.int64)
    assert torch.equal(onehot, torch.nn.functional.one_hot(expected, 6))


@pytest.mark.parametrize("method", ["compare", "bits"])
def test_bracket_methods_give_the_same_results(method):
    """Both bit-length methods feed the same Goldschmidt/quartic steps: same accuracy."""
    y, _ = run_protocol(reciprocal, RECIPROCAL_X, bracket=method)
    assert (y * RECIPROCAL_X - 1).abs().max() <= 1e-3
    y, _ = run_protocol(rsqrt, RSQRT_X, bracket=method)
    assert (y * RSQRT_X.sqrt() - 1).abs().max() <= 1e-3


def test_rsqrt_product_scales_rows_without_forming_the_root():
    """y * scale / sqrt(x) * weight over the whole window: relative error of the result
    <= 1e-3 where it is above 2^-8 (below, the f-bit ulp dominates), the twin within two
    ulp, and 9 rounds with or without weight (gamma and every bracket's candidate guess ride
    beside the bracket's 5 rounds; then the select 1 and the last product 2)."""
    g = torch.Generator().manual_seed(5)
    x = RSQRT_X[::10].reshape(-1, 1)  # 40 rows over [2^-14, 2^14)
    ratio = torch.rand(x.shape[0], 6, generator=g, dtype=torch.float64) * 2 - 1  # |y| <= sqrt(x)
    y = on_grid(ratio * x.sqrt())
    weight = on_grid(1 + 0.5 * torch.randn(6, generator=g, dtype=torch.float64))
    expected = y * 3.0 / x.sqrt() * weight
    out, traffic = run_protocol(rsqrt_product, x, y, weight, scale=3.0)
    big = expected.abs() > 2.0**-8
    assert ((out - expected)[big] / expected[big]).abs().max() <= 1e-3
    assert (out - expected).abs().max() <= 2.0**-10
    twin = rsqrt_product_twin(x, y, weight, scale=3.0)
    assert (out - twin).abs().max() <= 2 * 2.0**-18 + 1e-4 * twin.abs().max()
    assert traffic.depth == 9
    _, plain = run_protocol(lambda a, b: rsqrt_product(a, b, None, scale=3.0), x, y)
    assert plain.depth == 9
