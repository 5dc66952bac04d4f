"""The share store: owner-only files, all-or-nothing commits, models served again after a restart."""

from __future__ import annotations

import stat

import pytest
import torch

from veil.parties.durable import DurableModelStore
from veil.parties.models import HeldShare, ServedModel, attach_shares, build_structure
from veil.parties.store import ShareStore, StoreError

from .test_model_store import tiny_models


def _pair(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-(2**62), 2**62, (2, *shape), dtype=torch.int64, generator=generator)


def test_round_trip_is_exact_and_files_are_owner_only(tmp_path) -> None:
    store = ShareStore(tmp_path / "store")
    pairs = {"a.weight": _pair((3, 4), 0), "b.bias": _pair((5,), 1)}
    writer = store.begin_model("m", {"family": "X", "headroom": 3})
    for name, pair in pairs.items():
        writer.put(name, pair, 18)
    writer.commit()
    reopened = ShareStore(tmp_path / "store")
    assert reopened.models() == ["m"]
    assert reopened.meta("m") == {"family": "X", "headroom": 3}
    assert reopened.params("m") == list(pairs)
    for name, pair in pairs.items():
        got, frac = reopened.load("m", name)
        assert frac == 18 and torch.equal(got, pair)
    paths = [tmp_path / "store", *(tmp_path / "store").rglob("*")]
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_uncommitted_model_is_invisible_and_cleaned_at_start(tmp_path) -> None:
    store = ShareStore(tmp_path)
    writer = store.begin_model("half", {})
    writer.put("w", _pair((2,), 0), 18)  # the party dies before commit
    assert store.models() == []
    assert ShareStore(tmp_path).models() == []
    assert [p.name for p in tmp_path.iterdir()] == []
    with pytest.raises(StoreError, match="no model named 'half'"):
        store.meta("half")


def test_recommit_replaces_and_delete_removes(tmp_path) -> None:
    store = ShareStore(tmp_path)
    for seed in (0, 1):
        writer = store.begin_model("m", {"seed": seed})
        writer.put("w", _pair((2,), seed), 18)
        writer.commit()
    assert store.meta("m") == {"seed": 1}
    assert torch.equal(store.load("m", "w")[0], _pair((2,), 1))
    assert len(list(tmp_path.iterdir())) == 1
    store.delete("m")
    assert store.models() == []


def test_existing_directory_is_made_owner_only(tmp_path) -> None:
    root = tmp_path / "loose"
    root.mkdir(mode=0o755)
    ShareStore(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700


def test_durable_store_serves_a_model_again_after_restart(tmp_path) -> None:
    hf = tiny_models()[1].eval()  # GPT-2 (tied embeddings)
    config = hf.config.to_json_string(use_diff=False)
    structure = build_structure("GPT2LMHeadModel", config)
    shares = {
        name: HeldShare(_pair(tuple(value.shape), i), 18)
        for i, (name, value) in enumerate(dict(structure.named_params()).items())
    }
    model = ServedModel("GPT2LMHeadModel", config, 2, attach_shares(structure, shares))
    DurableModelStore(ShareStore(tmp_path)).put("gpt", model)
    restarted = DurableModelStore(ShareStore(tmp_path))
    assert restarted.restore() == ["gpt"]
    again = restarted.get("gpt")
    assert (again.family, again.config_json, again.norm_headroom_bits) == (
        "GPT2LMHeadModel",
        config,
        2,
    )
    before = dict(model.module.named_params())
    for name, held in again.module.named_params():
        assert torch.equal(held.pair, before[name].pair) and held.frac_bits == 18
