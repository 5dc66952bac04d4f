"""Seed-compressed dealing: the payloads expand to a sharing of the value, party 0's view
is two seeds whatever the value, and the sizes are 32 bytes (party 0) and 8 per element +
16 (parties 1 and 2) per tensor."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.seeded import Payload, deal_seeded, expand, gather, uploads
from veil.mpc.sharing import reconstruct

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_expanded_pairs_reconstruct_exactly_and_overlap(shape, seed) -> None:
    value = torch.randint(-(2**62), 2**62, shape, generator=torch.Generator().manual_seed(seed))
    payloads = deal_seeded(value)
    pairs = [expand(p, shape) for p in payloads]
    for i, pair in enumerate(pairs):
        assert pair.shape == (2, *shape) and pair.dtype == torch.int64
        assert torch.equal(pair[1], pairs[(i + 1) % 3][0])  # x_{i+1} held by i and i+1
    assert torch.equal(reconstruct(pairs, payloads[0].frac_bits), value)


@pytest.mark.parametrize("chunk", [1, 3, 5, 64])
def test_dealing_in_pieces_gives_the_same_sharing(monkeypatch, chunk) -> None:
    """Pieces of any size (5 elements = 40 bytes: not a whole number of AES blocks) continue
    both keystreams exactly, so the parties' whole-tensor expansion still opens to x."""
    from veil.mpc import seeded

    monkeypatch.setattr(seeded, "DEAL_CHUNK", chunk)
    fxp = FixedPoint()
    for value in (torch.randn(3, 7, dtype=torch.float32), torch.randint(0, 1000, (4, 6))):
        payloads = deal_seeded(value, fxp)
        pairs = [expand(p, value.shape) for p in payloads]
        frac = payloads[0].frac_bits
        opened = reconstruct(pairs, frac, fxp) if frac else reconstruct(pairs, 0)
        ring = fxp.encode(value) if value.is_floating_point() else value
        assert torch.equal(pairs[0][0] + pairs[0][1] + pairs[1][1], ring)
        assert torch.allclose(opened.double(), value.double(), atol=2**-fxp.frac_bits)


def test_a_value_out_of_range_is_refused_even_in_a_later_piece(monkeypatch) -> None:
    from veil.mpc import seeded
    from veil.mpc.fixedpoint import FixedPointRangeError

    monkeypatch.setattr(seeded, "DEAL_CHUNK", 4)
    value = torch.zeros(10)
    value[9] = 2.0**50
    with pytest.raises(FixedPointRangeError, match="outside the fixed-point range"):
        deal_seeded(value, FixedPoint())


def test_fixed_point_values_reconstruct() -> None:
    fxp = FixedPoint()
    value = torch.randn(4, 7, dtype=torch.float64)
    payloads = deal_seeded(value, fxp)
    pairs = [expand(p, value.shape) for p in payloads]
    assert payloads[0].frac_bits == fxp.frac_bits
    assert torch.allclose(reconstruct(pairs, fxp.frac_bits, fxp), value, atol=2**-fxp.frac_bits)


def test_party_zero_sees_only_seeds_and_sizes_are_as_stated() -> None:
    n = 3 * 5
    for value in (torch.zeros(3, 5), torch.full((3, 5), 7.25)):
        p0, p1, p2 = deal_seeded(value)
        assert all(isinstance(part, bytes) and len(part) == 16 for part in p0.parts)
        assert p0.nbytes == 32
        assert p1.nbytes == p2.nbytes == 8 * n + 16
        assert isinstance(p1.parts[0], bytes) and isinstance(p1.parts[1], torch.Tensor)
        assert isinstance(p2.parts[0], torch.Tensor) and isinstance(p2.parts[1], bytes)
        assert p1.parts[0] == p0.parts[1] and p2.parts[1] == p0.parts[0]  # s_1, s_0
        assert torch.equal(p1.parts[1], p2.parts[0])  # x_2
    assert deal_seeded(torch.zeros(3))[0].parts != deal_seeded(torch.zeros(3))[0].parts  # fresh


def test_the_data_component_looks_uniform_whatever_the_value() -> None:
    """x_2 = x - x_0 - x_1 is masked by a keystream: its bits are balanced for x = 0 too."""
    for value in (torch.zeros(50_000, dtype=torch.int64), torch.arange(50_000)):
        data = deal_seeded(value)[1].parts[1]
        bits = torch.stack([(data >> k) & 1 for k in range(64)]).double().mean(dim=1)
        assert ((bits - 0.5).abs() < 0.015).all()


def test_upload_form_round_trips_and_is_checked() -> None:
    value = torch.randn(2, 3)
    for payload in deal_seeded(value):
        parts = {name: (t, payload.frac_bits) for name, t in uploads("w:x", payload)}
        back = gather(payload.rank, parts)["w:x"]
        assert torch.equal(expand(back, (2, 3)), expand(payload, (2, 3)))
    p0 = deal_seeded(value)[0]
    with pytest.raises(ValueError, match="exactly 16 bytes"):
        short, seed = torch.zeros(15, dtype=torch.uint8), torch.zeros(16, dtype=torch.uint8)
        gather(0, {"s:0:w:x": (short, 18), "s:1:w:x": (seed, 18)})
    with pytest.raises(ValueError, match="holds components"):
        gather(1, {name: (t, 18) for name, t in uploads("w:x", p0)})
    with pytest.raises(ValueError, match="shape"):
        expand(deal_seeded(value)[1], (3, 2))
    with pytest.raises(ValueError, match="s:<component 0-2>"):
        gather(0, {"s:9:w:x": (torch.zeros(16, dtype=torch.uint8), 18)})


def test_payload_components() -> None:
    assert Payload(2, (b"", b""), 0).components == (2, 0)
