"""reciprocal and rsqrt: relative error <= 1e-3 over their documented ranges, and cost."""

import torch

from protocols.approx.reciprocal import reciprocal, reciprocal_twin
from protocols.approx.rsqrt import rsqrt, rsqrt_twin
from tests.protocols.approx_helpers import on_grid, run_protocol

RECIPROCAL_X = on_grid(torch.exp2(torch.linspace(-10, 7, 400, dtype=torch.float64)))
RSQRT_X = on_grid(torch.exp2(torch.linspace(-14, 13.99, 400, dtype=torch.float64)))


def test_reciprocal_twin_relative_error():
    """Range [2^-10, 2^7]: the iteration's 5.4e-5 plus rounding of the f-bit result."""
    xs = on_grid(torch.exp2(torch.linspace(-10, 7, 100001, dtype=torch.float64)))
    assert (reciprocal_twin(xs, frac_bits=None) * xs - 1).abs().max() <= 5.5e-5
    assert (reciprocal_twin(xs) * xs - 1).abs().max() <= 1e-3


def test_reciprocal_protocol_relative_error_and_cost():
    """Range [2^-10, 2^7] at f bits; to 2^10 with 4 extra result bits.  20 rounds."""
    y, traffic = run_protocol(reciprocal, RECIPROCAL_X)
    assert (y * RECIPROCAL_X - 1).abs().max() <= 1e-3
    assert ((y - reciprocal_twin(RECIPROCAL_X)) / y).abs().max() <= 1e-3
    assert traffic.rounds <= 22
    wide = on_grid(torch.exp2(torch.linspace(-10, 9.99, 200, dtype=torch.float64)))
    y, _ = run_protocol(reciprocal, wide, extra_bits=4)
    assert (y * wide - 1).abs().max() <= 1e-3


def test_rsqrt_twin_relative_error():
    """Range [2^-14, 2^14): the quartic's 8.2e-5 plus rounding of the f-bit result."""
    xs = on_grid(torch.exp2(torch.linspace(-14, 13.999, 100001, dtype=torch.float64)))
    assert (rsqrt_twin(xs, frac_bits=None) * xs.sqrt() - 1).abs().max() <= 8.3e-5
    assert (rsqrt_twin(xs) * xs.sqrt() - 1).abs().max() <= 5e-4


def test_rsqrt_protocol_relative_error_and_cost():
    """Range [2^-14, 2^14): relative error <= 1e-3; about 25 rounds."""
    y, traffic = run_protocol(rsqrt, RSQRT_X)
    assert (y * RSQRT_X.sqrt() - 1).abs().max() <= 1e-3
    assert traffic.rounds <= 25


def test_rsqrt_public_scale_is_free():
    """scale folds into the public factor table: same cost, scale * rsqrt."""
    y, traffic = run_protocol(rsqrt, RSQRT_X, scale=27.7)
    assert (y * RSQRT_X.sqrt() / 27.7 - 1).abs().max() <= 1e-3
    assert traffic.rounds <= 25
