"""Seed-compressed weight shares in a party's store: a third of the bytes, the same pairs."""

from __future__ import annotations

import pytest
import torch

from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.seeded import deal_seeded
from veil.mpc.sharing import reconstruct
from veil.parties.store import ShareStore, StoreError


def _store_bytes(root) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.npy"))


def test_parties_store_seeds_and_one_component_and_expand_the_same_pairs(tmp_path) -> None:
    fxp = FixedPoint()
    value = torch.randn(64, 48, dtype=torch.float64)
    stores = [ShareStore(tmp_path / f"p{r}") for r in range(3)]
    writers = [s.begin_model("m", {"family": "test"}) for s in stores]
    for writer, payload in zip(writers, deal_seeded(value, fxp), strict=True):
        writer.put_payload("w", payload, tuple(value.shape))
    for writer in writers:
        writer.commit()
    # Party 0 keeps two seeds and no data; parties 1 and 2 one int64 component each.
    assert _store_bytes(tmp_path / "p0") == 0
    for r in (1, 2):
        assert 8 * value.numel() <= _store_bytes(tmp_path / f"p{r}") < 8 * value.numel() + 256
    pairs = [s.reader("m").load_pair("w") for s in stores]
    for r in range(3):  # replicated: party r's second component is party r+1's first
        assert torch.equal(pairs[r][1], pairs[(r + 1) % 3][0])
    assert not torch.equal(pairs[0][0], pairs[0][1])
    opened = reconstruct([p.clone() for p in pairs], fxp.frac_bits, fxp)
    assert torch.allclose(opened, value, atol=2.0 ** -fxp.frac_bits)
    # The older reading API expands seeded entries too.
    pair, frac = stores[0].load("m", "w")
    assert torch.equal(pair, pairs[0]) and frac == fxp.frac_bits


def test_a_damaged_component_file_is_named(tmp_path) -> None:
    store = ShareStore(tmp_path / "p1")
    writer = store.begin_model("m", {})
    writer.put_payload("w", deal_seeded(torch.ones(4, 4))[1], (4, 4))
    writer.commit()
    reader = store.reader("m")
    (data_file,) = reader.directory.glob("*.npy")
    import numpy as np

    np.save(data_file, np.zeros((3, 4), dtype=np.int64))
    with pytest.raises(StoreError, match="does not hold 'w'"):
        reader.load_pair("w")
    with pytest.raises(StoreError, match="no parameter 'v'"):
        reader.load_pair("v")
