"""exp for x <= 0: twin vs torch.exp, protocol vs twin, and cost."""

import pytest
import torch

from tests.protocols.approx_helpers import ULP, msb_bytes, on_grid, run_protocol
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


def test_poly8_base_twin_error_protocol_and_cost():
    """Degree-8 base, t = 2: the fit's 1.5e-6 plus f-bit rounding passed through two
    squarings (measured 1.8e-5 twin vs exp); protocol vs twin within 16 ulp (each of the
    base's 4 truncations is off by at most 1 ulp, about 3 ulp after the coefficients, and
    each squaring doubles a relative error and adds 1 ulp: 2 (2 * 3 + 1) + 1 = 15).  11
    rounds (3 product levels, 2 squarings, the clip beside them and its multiplexer) and
    the bytes of quadratic t = 5: 6 truncations of 64 bytes, the clip's MSB and multiplexer."""
    xs = on_grid(torch.linspace(-14, 0, 100001, dtype=torch.float64))
    assert (exp_twin(xs, 2, "poly8") - xs.exp()).abs().max() <= 2.5e-5
    y, traffic = run_protocol(lambda x: exp(x, 2, "poly8"), X)
    assert (y - exp_twin(X, 2, "poly8")).abs().max() <= 16 * ULP
    assert (y - torch.where(X < -14, 0.0, X.exp())).abs().max() <= 2.5e-5 + 16 * ULP
    assert y[-2:].eq(0).all()
    assert traffic.depth == 11
    assert traffic.bytes_sent == msb_bytes(X.numel()) + (6 * 64 + 64) * X.numel()


def test_poly8_base_needs_the_clip():
    """The fit holds on [clip, 0] only: without the clip the base is garbage below it."""
    with pytest.raises(ValueError, match="poly8"):
        exp_twin(X, 2, "poly8", clip=None)
