"""exp for x <= 0: twin vs torch.exp, protocol vs twin, and cost."""

import pytest
import torch

from tests.protocols.approx_helpers import msb_bytes, on_grid, run_protocol
from veil.protocols.approx.exp import exp, exp_twin

X = on_grid(
    torch.cat([torch.linspace(-20, 0, 2001, dtype=torch.float64), torch.tensor([-1e4, -14.01])])
)


@pytest.mark.parametrize(
    ("squarings", "base", "bound"),
    [
        (5, "quadratic", 2.5e-4),
        (6, "quadratic", 2e-4),
        (5, "linear", 8.7e-3),
        (8, "linear", 1.2e-3),
    ],
)
def test_twin_abs_error_on_minus_14_to_0(squarings, base, bound):
    """Range [-14, 0] (0 below): the documented table of the module."""
    xs = on_grid(torch.linspace(-14, 0, 100001, dtype=torch.float64))
    assert (exp_twin(xs, squarings, base) - xs.exp()).abs().max() <= bound
    below = exp_twin(torch.tensor([-14.001, -100.0, -1e6], dtype=torch.float64), squarings, base)
    assert (below == 0).all()


def test_protocol_matches_twin_and_costs():
    """Range [-20, 0] and far below: |protocol - twin| <= 2^(t+1) ulp; 13 rounds (the 6
    products' 12, the clip's comparison beside them, then its mux_bits); per party 175.6 bytes
    (128 for the 6 products, 26.3 for the clip's MSB, 21.3 for its mux_bits)."""
    y, traffic = run_protocol(exp, X)
    assert (y - exp_twin(X)).abs().max() <= 2.5e-4
    assert y[-2:].eq(0).all()
    assert traffic.depth == 13
    assert traffic.bytes_sent == msb_bytes(X.numel()) + (6 * 64 + 64) * X.numel()


def test_protocol_without_clip_is_cheaper():
    """Range [-50, 0] for clip=None (p(x/32)^32 stays near exp): 12 rounds, 128 bytes."""
    xs = on_grid(torch.linspace(-50, 0, 501, dtype=torch.float64))
    y, traffic = run_protocol(exp, xs, clip=None)
    assert (y - exp_twin(xs, clip=None)).abs().max() <= 2.5e-4
    assert (y - xs.exp()).abs().max() <= 5e-4
    assert traffic.depth <= 12
    assert traffic.bytes_sent == 6 * 64 * xs.numel()  # summed over the parties
