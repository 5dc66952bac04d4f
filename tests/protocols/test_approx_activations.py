"""GeLU and SiLU (PUMA's piecewise polynomials): twin vs exact, protocol vs twin, cost."""

import torch
import torch.nn.functional as F

from protocols.approx.gelu import gelu, gelu_twin
from protocols.approx.silu import silu, silu_twin
from tests.protocols.approx_helpers import ULP, on_grid, run_protocol

FAR = torch.tensor([-1e5, -3000.0, 3000.0, 1e5], dtype=torch.float64)


def test_gelu_twin_within_0_02_of_erf_gelu_on_minus_10_to_10():
    xs = on_grid(torch.linspace(-10, 10, 400001, dtype=torch.float64))
    assert (gelu_twin(xs) - F.gelu(xs)).abs().max() <= 0.02
    assert (gelu_twin(xs) - F.gelu(xs, approximate="tanh")).abs().max() <= 0.02


def test_silu_twin_within_0_075_on_minus_12_to_12():
    xs = on_grid(torch.linspace(-12, 12, 400001, dtype=torch.float64))
    assert (silu_twin(xs) - F.silu(xs)).abs().max() <= 0.075


def test_gelu_protocol_matches_twin_and_costs():
    """Range [-10, 10] plus far values: |protocol - twin| <= 4 ulp; 23 rounds, 520 bytes."""
    xs = torch.cat([on_grid(torch.linspace(-10, 10, 2001, dtype=torch.float64)), FAR])
    y, traffic = run_protocol(gelu, xs)
    assert (y - gelu_twin(xs)).abs().max() <= 4 * ULP
    assert (y - F.gelu(xs)).abs().max() <= 0.02
    assert traffic.rounds <= 23
    assert traffic.bytes_sent <= 520 * xs.numel()


def test_silu_protocol_matches_twin_and_costs():
    """Range [-12, 12] plus far values: |protocol - twin| <= 4 ulp; 23 rounds, 496 bytes."""
    xs = torch.cat([on_grid(torch.linspace(-12, 12, 2001, dtype=torch.float64)), FAR])
    y, traffic = run_protocol(silu, xs)
    assert (y - silu_twin(xs)).abs().max() <= 4 * ULP
    assert (y - F.silu(xs)).abs().max() <= 0.075
    assert traffic.rounds <= 23
    assert traffic.bytes_sent <= 496 * xs.numel()
