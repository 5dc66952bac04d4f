"""LayerNorm and RMSNorm: <= 5e-3 max abs error with per-row scales in [1e-2, 1e2]."""

import pytest
import torch
import torch.nn.functional as F

from tests.protocols.approx_helpers import fused_comparison_bytes, run_protocol
from veil.protocols.approx.layernorm import (
    layernorm,
    layernorm_projected,
    layernorm_projected_twin,
    layernorm_twin,
    rmsnorm,
    rmsnorm_twin,
)

BOUND = 5e-3


def _rows(n_rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.pow(10.0, torch.rand(n_rows, 1, generator=g, dtype=torch.float64) * 4 - 2)
    offset = torch.randn(n_rows, 1, generator=g, dtype=torch.float64)
    x = torch.randn(n_rows, 768, generator=g, dtype=torch.float64) * scale + offset
    weight = 1 + 0.1 * torch.randn(768, generator=g, dtype=torch.float64)
    bias = 0.1 * torch.randn(768, generator=g, dtype=torch.float64)
    return x, weight, bias


def _rms_reference(x, weight, eps):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_twins_on_128x768():
    x, weight, bias = _rows(128)
    assert (
        layernorm_twin(x, weight, bias) - F.layer_norm(x, (768,), weight, bias, 1e-5)
    ).abs().max() <= BOUND
    assert (rmsnorm_twin(x, weight) - _rms_reference(x, weight, 1e-6)).abs().max() <= BOUND


@pytest.mark.parametrize("n_rows", [16])
def test_layernorm_protocol(n_rows):
    """Rows at scales 1e-2..1e2 (incl. both ends): within 5e-3 of torch; 11 rounds (the mean
    2; S reshared 1 and the bracket 5, beside the candidates u (2), w^2 and the quartics (4);
    the select 1; the last product 2: rsqrt_product_of_components' 9)."""
    x, weight, bias = _rows(n_rows, seed=1)
    x[0] = x[0] * 1e-2 / x[0].std()
    x[1] = x[1] * 1e2 / x[1].std()
    y, traffic = run_protocol(layernorm, x, weight, bias)
    assert (y - F.layer_norm(x, (768,), weight, bias, 1e-5)).abs().max() <= BOUND
    assert (y - layernorm_twin(x, weight, bias)).abs().max() <= 1.5e-3
    assert traffic.depth == 11


def test_rmsnorm_protocol():
    x, weight, _ = _rows(16, seed=2)
    y, traffic = run_protocol(rmsnorm, x, weight)
    assert (y - _rms_reference(x, weight, 1e-6)).abs().max() <= BOUND
    assert traffic.depth == 9  # no mean


def test_rmsnorm_headroom_allows_massive_activations():
    """Rows with RMS 1000 (S = 768e6 > 2^26): headroom_bits = 4 keeps them exact to 5e-3."""
    x, weight, _ = _rows(4, seed=3)
    x = x / x.pow(2).mean(-1, keepdim=True).sqrt() * 1000
    y, traffic = run_protocol(rmsnorm, x, weight, headroom_bits=4)
    assert (y - _rms_reference(x, weight, 1e-6)).abs().max() <= BOUND
    assert (y - rmsnorm_twin(x, weight, headroom_bits=4)).abs().max() <= 2e-3
    assert traffic.depth == 11  # the headroom truncation 2, then 9


def test_layernorm_without_affine_is_cheaper():
    """weight=None, bias=None (gamma, beta folded into the next layer), summed over the parties:
    per element one product truncated from its 3-out-of-3 components (y * g, 64 bytes; with
    gamma y * gamma too), and per row 33 comparisons (rsqrt's window of 34 positions, with the
    fused root), the 34 candidates' u, w^2 and quartic truncations (3 * 34 * 64), S reshared
    (3 * 8), the select (one plain product, 3 * 8) and the mean's truncation (48)."""
    x, weight, bias = _rows(16, seed=4)
    y, traffic = run_protocol(layernorm, x, None, None)
    assert (y - F.layer_norm(x, (768,))).abs().max() <= BOUND
    assert (y - layernorm_twin(x, None, None)).abs().max() <= 1.5e-3
    rows = x.shape[0]
    per_row = 3 * 34 * 64 + 3 * 8 + 3 * 8 + 48
    assert traffic.bytes_sent == 64 * x.numel() + fused_comparison_bytes(33 * rows) + per_row * rows
    _, affine = run_protocol(layernorm, x, weight, bias)
    assert affine.bytes_sent == traffic.bytes_sent + 64 * x.numel()
    assert affine.depth == traffic.depth


def _then_weight(n_out: int = 96, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.05 * torch.randn(768, n_out, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_next_matmul_rides_inside_the_norm(norm):
    """norm(x) @ W with the matmul inside rsqrt_product (gain folded into W): 2 rounds fewer
    than the norm and then the matmul.  The result is (x @ W) times the selected guess, i.e.
    norm(x) @ W up to the norm's elementwise error, so the bounds are the elementwise ones
    times W's largest column L1 norm."""
    x, _, _ = _rows(16, seed=4)
    w = _then_weight()
    column_l1 = w.abs().sum(0).max().item()
    if norm == "layernorm":
        twin, depth = layernorm_twin, 11
        reference = F.layer_norm(x, (768,), None, None, 1e-5) @ w
        fused, fused_traffic = run_protocol(lambda x, w: layernorm(x, None, None, then=w), x, w)
        _, after_traffic = run_protocol(lambda x, w: layernorm(x, None, None) @ w, x, w)
        twin_out = twin(x, None, None, then=w)
    else:
        twin, depth = rmsnorm_twin, 9
        reference = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)) @ w
        fused, fused_traffic = run_protocol(lambda x, w: rmsnorm(x, None, then=w), x, w)
        _, after_traffic = run_protocol(lambda x, w: rmsnorm(x, None) @ w, x, w)
        twin_out = twin(x, None, then=w)
    assert (fused - reference).abs().max() <= BOUND * column_l1
    assert (fused - twin_out).abs().max() <= 1.5e-3 * column_l1
    assert (twin_out - reference).abs().max() <= BOUND * column_l1
    assert fused_traffic.depth == depth
    assert after_traffic.depth == depth + 2


def test_post_norm_and_its_projection_come_together():
    """layernorm_projected: y = LayerNorm(x) gamma + beta as layernorm gives it, and y @ W
    from the same last product level (beta @ W truncated beside the candidates): 11 rounds
    for both, 2 fewer than LayerNorm and then the matmul.  Bounds: the elementwise ones, times
    W's largest column L1 norm for the projection (plus one ulp of beta @ W)."""
    x, weight, bias = _rows(16, seed=6)
    w = _then_weight(seed=7)
    column_l1 = w.abs().sum(0).max().item()
    (y, projected), traffic = run_protocol(
        lambda x, g, b, w: layernorm_projected(x, g, b, w), x, weight, bias, w
    )
    after, after_traffic = run_protocol(lambda x, g, b, w: layernorm(x, g, b) @ w, x, weight, bias, w)
    reference = F.layer_norm(x, (768,), weight, bias, 1e-5)
    twin_y, twin_projected = layernorm_projected_twin(x, weight, bias, w)
    assert (y - reference).abs().max() <= BOUND
    assert (projected - reference @ w).abs().max() <= BOUND * column_l1
    assert (y - twin_y).abs().max() <= 1.5e-3
    assert (projected - twin_projected).abs().max() <= 1.5e-3 * column_l1
    assert (after - projected).abs().max() <= 2 * BOUND * column_l1
    assert traffic.depth == 11
    assert after_traffic.depth == 13


def test_rope_rides_beside_the_rmsnorm_bracket():
    """rmsnorm(x, then=W, rotate=RoPE): the query and key columns of x @ W rotated while the
    bracket runs (veil.protocols.approx.rotary), in the 9 rounds of the norm and its matmul
    alone.  Rows (batch 2, seq 8), 4 heads of 16 rotated, 32 value columns passed through.
    Bounds: each output mixes two columns (cos^2 + sin^2 = 1), so twice the projection's."""
    from veil.protocols.approx.rotary import RotaryColumns

    x, _, _ = _rows(16, seed=8)
    x = x.reshape(2, 8, 768)
    w = _then_weight(96, seed=9)
    column_l1 = w.abs().sum(0).max().item()
    angles = torch.arange(8, dtype=torch.float64)[:, None] * torch.pow(10000.0, -torch.arange(0, 16, 2) / 16)
    angles = torch.cat([angles, angles], dim=-1)
    rotate = RotaryColumns(angles.cos(), angles.sin(), heads=4, head_dim=16)
    y, traffic = run_protocol(lambda x, w: rmsnorm(x, None, then=w, rotate=rotate), x, w)
    reference = rotate.apply((x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)) @ w)
    twin = rmsnorm_twin(x, None, then=w, rotate=rotate)
    assert (y - reference).abs().max() <= 2 * BOUND * column_l1
    assert (y - twin).abs().max() <= 2 * 1.5e-3 * column_l1
    assert (y[..., 64:] - rmsnorm_twin(x, None, then=w)[..., 64:]).abs().max() <= 1.5e-3 * column_l1
    assert traffic.depth == 9
    with pytest.raises(ValueError, match="rotates y @ then only"):
        run_protocol(lambda x, g, w: rmsnorm(x, g, then=w, rotate=rotate), x, torch.ones(768), w)
