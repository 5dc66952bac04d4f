"""GeLU and SiLU (PUMA's piecewise polynomials and the symmetric variants): twin vs exact,
protocol vs twin, cost."""

import pytest
import torch
import torch.nn.functional as F

from tests.protocols.approx_helpers import ULP, msb_bytes, on_grid, run_protocol
from veil.protocols.approx.gelu import gelu, gelu_twin
from veil.protocols.approx.silu import POWER_EXTRA_BITS, SILU_RELU, silu, silu_twin

FAR = torch.tensor([-1e5, -3000.0, 3000.0, 1e5], dtype=torch.float64)
# variant: (documented twin error, MSBs per element, other bytes per element summed over
# the three parties, critical-path rounds).  Other bytes: 64 per fused product, 48 per
# truncation, 64 per multiplexer on a boolean bit (mux_bits), 32 per B2A, 24 per product
# with an integer bit.  Per party for large tensors: 26.3 per MSB plus a third of the rest
# (GeLU: PUMA 260.2, symmetric 180.9; SiLU: relu 305.6, PUMA 238.9, symmetric 175.3).
# Rounds: the comparison (5) runs beside the powers (:mod:`veil.mpc.lockstep`), so GeLU costs
# the powers' levels, one truncation for the polynomials and the selection (symmetric:
# the last level and the polynomial in one truncation of components).
GELU = {"puma": (0.0200, 3, 4 * 64 + 2 * 48 + 3 * 64, 9), "symmetric": (0.0011, 2, 4 * 64 + 2 * 64, 9)}
# SiLU relu: 7 power products, the even and odd parts' truncation (2 x 48), one AND (inside
# AND negative, 24) and four multiplexers on boolean bits; 9 rounds (the powers' 6 and the
# truncation, the comparison and the AND beside them, then the multiplexers).
SILU = {
    "relu": (0.0027, 3, 7 * 64 + 2 * 48 + 24 + 4 * 64, 9),
    "puma": (0.0720, 3, 3 * 64 + 2 * 48 + 3 * 64, 9),
    "symmetric": (0.0336, 2, 3 * 64 + 48 + 2 * 64, 9),
}
# Protocol vs twin, in ulp: the final truncation, plus for the relu fit each power b^k
# (k - 1 truncations of f + 8 bits, floor against the twin's rounding) times |c_k|.
RELU_PROTOCOL_ULP = 1 + sum(abs(c) * k for k, c in enumerate(SILU_RELU)) / 2**POWER_EXTRA_BITS
SILU_PROTOCOL_ULP = {"relu": RELU_PROTOCOL_ULP, "puma": 4, "symmetric": 4}


@pytest.mark.parametrize("variant", GELU)
def test_gelu_twin_within_bound_of_erf_and_tanh_gelu_on_minus_10_to_10(variant):
    """Range [-10, 10]: <= 0.02 (issue 3); documented: PUMA 0.0199, symmetric 9.9e-4."""
    xs = on_grid(torch.linspace(-10, 10, 400001, dtype=torch.float64))
    bound = GELU[variant][0]
    assert (gelu_twin(xs, variant) - F.gelu(xs)).abs().max() <= bound
    assert (gelu_twin(xs, variant) - F.gelu(xs, approximate="tanh")).abs().max() <= 0.02


@pytest.mark.parametrize("variant", SILU)
def test_silu_twin_within_bound_on_minus_12_to_12(variant):
    """Range [-12, 12]: <= 0.075 (issue 3); documented: relu 2.7e-3, PUMA 0.0719,
    symmetric 0.0335."""
    xs = on_grid(torch.linspace(-12, 12, 400001, dtype=torch.float64))
    assert (silu_twin(xs, variant) - F.silu(xs)).abs().max() <= SILU[variant][0]


def test_silu_relu_fit_where_gate_activations_live():
    """Range [-4, 4] (SmolLM2's gate inputs, 99.7%): documented 1.8e-4 (PUMA's: 0.072 at 4),
    and the mean signed error that every hidden unit shares is below 2e-5 on N(0, 1) inputs."""
    xs = on_grid(torch.linspace(-4, 4, 160001, dtype=torch.float64))
    assert (silu_twin(xs) - F.silu(xs)).abs().max() <= 2e-4
    normal = on_grid(torch.randn(1_000_000, generator=torch.Generator().manual_seed(0)).double())
    assert (silu_twin(normal) - F.silu(normal)).mean().abs() <= 2e-5


@pytest.mark.parametrize("variant", GELU)
def test_gelu_protocol_matches_twin_and_costs(variant):
    """Range [-10, 10] plus far values: |protocol - twin| <= 4 ulp; documented cost."""
    _, comparisons, per_element, rounds = GELU[variant]
    xs = torch.cat([on_grid(torch.linspace(-10, 10, 2001, dtype=torch.float64)), FAR])
    y, traffic = run_protocol(gelu, xs, variant=variant)
    assert (y - gelu_twin(xs, variant)).abs().max() <= 4 * ULP
    assert (y - F.gelu(xs)).abs().max() <= 0.02
    assert traffic.depth == rounds
    n = xs.numel()
    assert traffic.bytes_sent == msb_bytes(comparisons * n) + per_element * n


@pytest.mark.parametrize("variant", SILU)
def test_silu_protocol_matches_twin_and_costs(variant):
    """Range [-12, 12] plus far values: |protocol - twin| within SILU_PROTOCOL_ULP (relu:
    26 ulp); documented cost."""
    _, comparisons, per_element, rounds = SILU[variant]
    xs = torch.cat([on_grid(torch.linspace(-12, 12, 2001, dtype=torch.float64)), FAR])
    y, traffic = run_protocol(silu, xs, variant=variant)
    assert (y - silu_twin(xs, variant)).abs().max() <= SILU_PROTOCOL_ULP[variant] * ULP
    assert (y - F.silu(xs)).abs().max() <= 0.075
    assert traffic.depth == rounds
    n = xs.numel()
    assert traffic.bytes_sent == msb_bytes(comparisons * n) + per_element * n
