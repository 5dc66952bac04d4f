"""Every approximation at other fixed-point precisions (f = 14, 16, 20, 22): protocol vs twin
at that f, and the accuracy bounds of issue 3 where f allows them."""

import pytest
import torch
import torch.nn.functional as F

from tests.protocols.approx_helpers import run_protocol
from tests.protocols.test_approx_activations import RELU_PROTOCOL_ULP
from veil import mpc
from veil.protocols.approx.exp import exp, exp_twin
from veil.protocols.approx.gelu import gelu, gelu_twin
from veil.protocols.approx.layernorm import layernorm, layernorm_twin, rmsnorm, rmsnorm_twin
from veil.protocols.approx.reciprocal import reciprocal, reciprocal_twin
from veil.protocols.approx.rsqrt import rsqrt, rsqrt_twin
from veil.protocols.approx.silu import silu, silu_twin
from veil.protocols.approx.softmax import SOFTMAX_SQUARINGS, softmax, softmax_twin

FRACS = [14, 16, 20, 22]


def _grid(x: torch.Tensor, f: int) -> torch.Tensor:
    return torch.round(x * 2**f) / 2**f


@pytest.mark.parametrize("f", FRACS)
def test_elementwise(f):
    fxp = mpc.FixedPoint(f)
    ulp = 2.0**-f
    x = _grid(torch.linspace(-10, 10, 401, dtype=torch.float64), f)
    for protocol, twin, exact, bound, ulps in (
        (gelu, gelu_twin, F.gelu, 0.02, 4),
        (silu, silu_twin, F.silu, 0.075, RELU_PROTOCOL_ULP),
    ):
        y, _ = run_protocol(protocol, x, fxp=fxp)
        assert (y - twin(x, frac_bits=f)).abs().max() <= ulps * ulp + 2e-6  # + coefficient rounding
        assert (y - exact(x)).abs().max() <= bound
    neg = _grid(torch.linspace(-16, 0, 401, dtype=torch.float64), f)
    y, _ = run_protocol(exp, neg, fxp=fxp)
    assert (y - exp_twin(neg, frac_bits=f)).abs().max() <= 64 * ulp
    pos = _grid(torch.exp2(torch.linspace(-6, 6, 200, dtype=torch.float64)), f)
    y, _ = run_protocol(reciprocal, pos, -6, 7, fxp=fxp)
    assert ((y - reciprocal_twin(pos, -6, 7, frac_bits=f)) / y).abs().max() <= 8 * ulp * pos.max()
    y, _ = run_protocol(rsqrt, pos, -7, 7, fxp=fxp)
    assert ((y - rsqrt_twin(pos, -7, 7, frac_bits=f)) / y).abs().max() <= 64 * ulp * 8


@pytest.mark.parametrize("f", FRACS)
def test_rows(f):
    fxp = mpc.FixedPoint(f)
    g = torch.Generator().manual_seed(f)
    logits = torch.randn(4, 64, generator=g, dtype=torch.float64) * 3
    y, _ = run_protocol(softmax, logits, fxp=fxp)
    # exp's protocol error, at most 2^(t+1) ulp (protocols/approx/exp.py), reaches the output
    # divided by the row's sum (>= 1: the maximum's exp is 1); the reciprocal's and the final
    # product's truncations add a few ulp.  The carries are random, so the bound is the worst
    # case, not one run's error.
    assert (y - softmax_twin(logits, frac_bits=f)).abs().max() <= (2 ** (SOFTMAX_SQUARINGS + 1) + 4) * 2.0**-f
    assert (y - torch.softmax(logits, -1)).abs().max() <= 0.01
    x = torch.randn(4, 256, generator=g, dtype=torch.float64) * torch.tensor(
        [[0.1], [1.0], [3.0], [10.0]]
    )
    weight = 1 + 0.1 * torch.randn(256, generator=g, dtype=torch.float64)
    bias = 0.1 * torch.randn(256, generator=g, dtype=torch.float64)
    y, _ = run_protocol(layernorm, x, weight, bias, fxp=fxp)
    assert (y - layernorm_twin(x, weight, bias, frac_bits=f)).abs().max() <= 1e-3
    assert (y - F.layer_norm(x, (256,), weight, bias, 1e-5)).abs().max() <= 5e-3
    y, _ = run_protocol(rmsnorm, x, weight, fxp=fxp)
    assert (y - rmsnorm_twin(x, weight, frac_bits=f)).abs().max() <= 3e-3
