"""Share sessions and stored serving at the program level: parts of bounded size, malformed
part options refused, and a served model's weight loader closed when its request ends."""

from __future__ import annotations

import threading

import pytest
import torch

from veil.mpc import simulate
from veil.mpc.arith import ArithShare
from veil.mpc.seeded import deal_seeded
from veil.mpc.sharing import deal, reconstruct
from veil.nn.private import import_hf
from veil.parties.costs import RequestCost
from veil.parties.durable import DurableModelStore
from veil.parties.models import (
    LOGITS_PROGRAM,
    ModelStore,
    build_structure,
    model_programs,
    unique_params,
)
from veil.parties.share_sessions import check_part_options, part_options, stream_parts
from veil.parties.store import ShareStore
from veil.parties.stored_models import weightless_structure
from veil.proto import veil_pb2

from .test_models import EMBED_BOUND_SIM, tiny_bert, tiny_gpt2
from .test_stored_serving import IDS, tiny_llama


def test_the_cost_of_a_share_in_parts_adds_its_parts() -> None:
    def cost(wall: float, scale: int) -> RequestCost:
        return RequestCost(
            wall,
            tuple(
                veil_pb2.PartyCost(seconds=wall, bytes_sent=scale * r, send_steps=scale, depth=2)
                for r in range(3)
            ),
        )

    total = cost(1.0, 10).then(cost(2.5, 1))
    assert total.wall_s == 3.5
    assert [p.bytes_sent for p in total.parties] == [0, 11, 22]
    assert (total.send_steps, total.depth) == (11, 4)


def test_parts_stay_within_the_byte_budget_in_order() -> None:
    sizes = {"a": 10, "b": 20, "c": 5, "big": 100, "d": 1}
    parts = list(stream_parts(((n, torch.zeros(k)) for n, k in sizes.items()), part_bytes=8 * 30))
    names = [([n for n, _ in part], last) for part, last in parts]
    # "big" alone: larger than a part; only the final part is the last.
    assert names == [(["a", "b"], False), (["c"], False), (["big"], False), (["d"], True)]
    assert list(stream_parts(iter([]), 64)) == [([], True)]


def test_parts_read_their_weights_at_most_two_parts_ahead() -> None:
    read: list[str] = []

    def weights():
        for name in "abcdef":
            read.append(name)
            yield name, torch.zeros(30)

    parts = stream_parts(weights(), part_bytes=8 * 30)
    first, last = next(parts)
    assert ([n for n, _ in first], last) == (["a"], False)
    assert read == ["a", "b", "c"]  # part "b" held back until part "c" began
    assert [last for _, last in parts] == [False] * 4 + [True]


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"session": "XYZ"}, "lowercase hex"),
        ({"session": "abcdef12", "part": "-1"}, "part number"),
        ({"session": "abcdef12", "last": "yes"}, "'true' or 'false'"),
        ({"part": "1"}, "needs option 'session'"),
    ],
)
def test_malformed_part_options_are_named(options, why) -> None:
    assert why in check_part_options(options)
    assert check_part_options(part_options("abcdef12", 3, last=False)) is None


def _share(stores, hf) -> None:
    with torch.no_grad():
        params = unique_params(import_hf(hf))
    dealt = {name: deal_seeded(value.detach().float()) for name, value in params.items()}
    options = {
        "model": "tiny",
        "family": type(hf).__name__,
        "config": hf.config.to_json_string(use_diff=False),
    }
    names = list(params)
    groups = [names[: len(names) // 2], names[len(names) // 2 :]]
    for index, group in enumerate(groups):
        placed = options | part_options("feedbeef", index, last=index == 1)
        for rank, store in enumerate(stores):
            store.sessions.receive(store, placed, {n: dealt[n][rank] for n in group})


def _logits(stores) -> torch.Tensor:
    programs = [model_programs(store)[LOGITS_PROGRAM] for store in stores]
    pairs, _ = deal(IDS)

    def party_program(party):
        ids = ArithShare(party, pairs[party.rank], 0)
        out = programs[party.rank](party, {"input_ids": ids}, {"model": "tiny"})["logits"]
        return out.data, out.frac_bits

    results = simulate(party_program, timeout=60)
    return reconstruct([data for data, _ in results], results[0][1])


def _loaders() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith("-weights")]


def test_served_from_the_store_equals_resident_and_loaders_close_even_on_failure(tmp_path) -> None:
    hf = tiny_llama()
    stored = [DurableModelStore(ShareStore(tmp_path / f"p{r}"), budget_bytes=0) for r in range(3)]
    resident = [ModelStore() for _ in range(3)]
    _share(stored, hf)
    _share(resident, hf)
    got, want = _logits(stored), _logits(resident)
    assert (got - want).abs().max() < EMBED_BOUND_SIM
    assert _loaders() == []  # closed when the request returned
    # Party 1 loses a weight file mid-service: its request fails, so do its peers' (cut
    # off mid-forward, loaders running); every loader is closed all the same.
    next(iter((tmp_path / "p1").rglob("*.npy"))).unlink()
    with pytest.raises(Exception, match="loading weight"):
        _logits(stored)
    assert _loaders() == []


@pytest.mark.parametrize("make", [tiny_bert, tiny_gpt2, tiny_llama], ids=lambda f: f.__name__)
def test_a_party_checks_shares_against_a_structure_without_weight_memory(make) -> None:
    """The structure a party keeps while a share is under way: the same names and shapes as
    with random weights, every weight a meta tensor (no memory)."""
    hf = make()
    family, config = type(hf).__name__, hf.config.to_json_string(use_diff=False)
    light = unique_params(weightless_structure(family, config))
    full = unique_params(build_structure(family, config))
    assert {n: tuple(v.shape) for n, v in light.items()} == {
        n: tuple(v.shape) for n, v in full.items()
    }
    assert all(v.device.type == "meta" for v in light.values())


def test_the_weightless_structure_of_a_large_model_is_built_without_its_weights() -> None:
    """A LLaMA config of 1.1 G parameters (4.4 GB as float32), built in a fresh process: the
    party's peak RSS stays far below the weights (the interpreter, torch and transformers
    take about 0.5 GB), so a party can open a share of a model larger than its memory."""
    import subprocess
    import sys

    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a
    # pytest process that once held a large model would report that model's peak.
    script = (
        "import re, transformers\n"
        "from veil.parties.stored_models import weightless_structure\n"
        "c = transformers.LlamaConfig(vocab_size=1 << 18, hidden_size=2048, num_hidden_layers=8,"
        " num_attention_heads=16, intermediate_size=5504, tie_word_embeddings=False)\n"
        "s = weightless_structure('LlamaForCausalLM', c.to_json_string(use_diff=False))\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
        "print(sum(v.numel() for v in s.unique_params().values()), hwm)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    params, peak_kib = int(out[-2]), int(out[-1])
    assert params > 1.1e9
    assert peak_kib * 1024 < 4 * params / 3  # under a third of the float32 weights
