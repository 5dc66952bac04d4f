"""The share store: owner-only files, all-or-nothing commits, models served again after a restart."""

from __future__ import annotations

import stat

import pytest
import torch

from veil.mpc.seeded import deal_seeded, expand
from veil.nn.private import import_hf
from veil.nn.streamed import WeightSpec
from veil.parties.durable import DurableModelStore
from veil.parties.models import CALLER_OPTION, unique_params
from veil.parties.share_sessions import ShareError, part_options
from veil.parties.store import ShareStore, StoreError
from veil.parties.stored_models import StoredServedModel

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


def _gpt_options(hf) -> dict[str, str]:
    """The public options of a share of ``hf`` as model "gpt"."""
    return {
        "model": "gpt",
        "family": type(hf).__name__,
        "config": hf.config.to_json_string(use_diff=False),
    }


def _share_in_parts(stores, hf, parts: int, commit: bool = True) -> dict[str, list]:
    """Share ``hf`` into the three parties' stores in ``parts`` share requests (each party's
    program, called directly); returns every weight's three payloads."""
    with torch.no_grad():
        params = unique_params(import_hf(hf))
    names = list(params)
    groups = [names[i::parts] for i in range(parts)]  # out of order on purpose
    options = _gpt_options(hf) | {"norm_headroom_bits": "2"}
    dealt = {name: deal_seeded(value.detach().float()) for name, value in params.items()}
    for index, group in enumerate(groups if commit else groups[:-1]):
        placed = options | part_options("5e55104", index, last=index == parts - 1)
        for rank, store in enumerate(stores):
            store.sessions.receive(store, placed, {n: dealt[n][rank] for n in group})
    return dealt


def test_durable_store_keeps_what_was_dealt_and_serves_it_again_after_restart(tmp_path) -> None:
    hf = tiny_models()[1].eval()  # GPT-2 (tied embeddings)
    roots = [tmp_path / f"p{r}" for r in range(3)]
    stores = [DurableModelStore(ShareStore(root)) for root in roots]
    dealt = _share_in_parts(stores, hf, parts=3)
    assert all(store.names() == ["gpt"] for store in stores)
    # Party 0 stores seeds only; parties 1 and 2 one component per weight, never the pair.
    assert list(roots[0].rglob("*.npy")) == []
    elements = sum(payloads[1].parts[1].numel() for payloads in dealt.values())
    for root in roots[1:]:
        assert sum(p.stat().st_size for p in root.rglob("*.npy")) < 8 * elements + 256 * len(dealt)
    for rank, root in enumerate(roots):
        restarted = DurableModelStore(ShareStore(root))
        assert restarted.restore() == ["gpt"]
        again = restarted.get("gpt")
        assert isinstance(again, StoredServedModel)
        assert (again.family, again.norm_headroom_bits) == ("GPT2LMHeadModel", 2)
        specs = dict(again.module.named_params())
        assert all(isinstance(spec, WeightSpec) for spec in specs.values())  # nothing resident
        for name, payloads in dealt.items():
            want = expand(payloads[rank], specs[name].shape)
            assert torch.equal(again.source.load_pair(name), want), name


def test_a_share_cut_short_leaves_no_model_and_nothing_on_disk_after_restart(tmp_path) -> None:
    hf = tiny_models()[1].eval()
    roots = [tmp_path / f"p{r}" for r in range(3)]
    stores = [DurableModelStore(ShareStore(root)) for root in roots]
    _share_in_parts(stores, hf, parts=3, commit=False)  # the owner stops before the last part
    assert all(store.names() == [] for store in stores)
    assert any(roots[1].iterdir())  # the uncommitted parts are on disk, hidden
    for root in roots:
        assert DurableModelStore(ShareStore(root)).restore() == []
        assert list(root.iterdir()) == []


def test_a_part_out_of_order_or_from_another_identity_is_refused(tmp_path) -> None:
    hf = tiny_models()[1].eval()
    store = DurableModelStore(ShareStore(tmp_path))
    options = _gpt_options(hf) | {CALLER_OPTION: "owner"}
    store.sessions.receive(store, options | part_options("abcdef12", 0, last=False), {})
    assert store.sessions.owner("abcdef12") == "owner"
    later = options | part_options("abcdef12", 1, last=True)
    assert "it belongs to 'owner'" in store.sessions.check(later | {CALLER_OPTION: "owner2"})
    assert "expects part 1, got part 2" in store.sessions.check(
        options | part_options("abcdef12", 2, last=True)
    )
    unknown = options | part_options("0123abcd", 1, last=True)
    assert "no open share session" in store.sessions.check(unknown)
    with pytest.raises(ShareError, match="without weights"):
        store.sessions.receive(store, later, {})  # the commit needs every weight
    assert store.sessions.owner("abcdef12") is None and store.names() == []


def test_an_idle_share_is_abandoned_when_another_begins(tmp_path, monkeypatch) -> None:
    hf = tiny_models()[1].eval()
    store = DurableModelStore(ShareStore(tmp_path))
    options = _gpt_options(hf)
    store.sessions.receive(store, options | part_options("abcdef12", 0, last=False), {})
    hidden = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(hidden) == 1
    monkeypatch.setattr("veil.parties.share_sessions.SESSION_IDLE_SECONDS", -1.0)
    store.sessions.receive(store, options | part_options("0123abcd", 0, last=False), {})
    assert not hidden[0].exists()
    assert "no open share session" in store.sessions.check(
        options | part_options("abcdef12", 1, last=True)
    )
