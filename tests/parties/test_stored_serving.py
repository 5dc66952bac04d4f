"""A deployment shares a model in parts into the parties' stores and serves it streamed from
them: three ``veil serve`` processes with mutual TLS, restarted between share and use."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import transformers

from veil.nn.lazy_import import LazyCheckpoint
from veil.nn.private import PrivateModel
from veil.parties.client import InferenceError, VeilClient
from veil.parties.config import load_config

from .test_cli import assert_ports_free, free_ports, veil
from .test_model_store import tiny_models
from .test_models import EMBED_BOUND_SIM

TIMEOUT = 8.0
START_SECONDS = 120.0  # three processes importing torch on a loaded 2-core machine
PART_BYTES = 8 << 10  # the tiny model's ~25 KB per party go in several parts
IDS = torch.tensor([[3, 17, 42, 8, 29]])
_PART_DONE = re.compile(r"party 0: request \w+ veil\.share_model ok")


def tiny_llama() -> transformers.LlamaForCausalLM:
    config = tiny_models()[2].config
    config.tie_word_embeddings = True  # the head reads the embedding's stored weight
    torch.manual_seed(3)
    return transformers.LlamaForCausalLM(config).eval()


def _start(path: Path, logs: list[Path]) -> list[subprocess.Popen]:
    parties = []
    for rank, log in enumerate(logs):
        with log.open("a") as sink:
            parties.append(
                veil(
                    "serve", "--config", str(path), "--rank", str(rank),
                    "--weight-budget-mib", "0",  # every weight loaded alone, just in time
                    env_extra={"HF_HUB_OFFLINE": "1"},
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )
    return parties


def _stop(parties: list[subprocess.Popen]) -> None:
    for proc in parties:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in parties:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"party {proc.args} ignored SIGINT")


def _until_served(action, parties, logs, deadline_s: float = START_SECONDS):
    """``action()``, retried while the parties start (they refuse or are unreachable)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return action()
        except InferenceError:
            tail = "\n".join(log.read_text()[-1500:] for log in logs)
            assert time.monotonic() < deadline, tail
            assert all(p.poll() is None for p in parties), tail
            time.sleep(0.5)


@pytest.mark.slow  # two starts of three party processes: about a minute on 2 busy cores
def test_llama_shared_in_parts_is_served_from_the_stores_after_a_restart(tmp_path) -> None:
    from veil.parties.cli import main

    addresses = [f"--address=localhost:{port}" for port in free_ports(3)]
    assert main(["certs", "--out", str(tmp_path), *addresses]) == 0
    path = tmp_path / "cluster.toml"
    path.write_text(path.read_text().replace("timeout = 60.0", f"timeout = {TIMEOUT}"))
    config = load_config(path)
    logs = [tmp_path / f"party{r}.log" for r in range(3)]
    hf = tiny_llama()

    def client(name: str) -> VeilClient:
        return VeilClient(config, tmp_path / f"{name}.pem", tmp_path / f"{name}.key")

    hf.save_pretrained(tmp_path / "checkpoint")

    def share() -> None:  # read layer by layer, as the owner of a model larger than memory
        with client("owner") as owner:
            owner.share_model("tiny", LazyCheckpoint(tmp_path / "checkpoint"), part_bytes=PART_BYTES)

    parties = _start(path, logs)
    try:
        _until_served(share, parties, logs)
    finally:
        _stop(parties)
    parts = len(_PART_DONE.findall(logs[0].read_text()))
    assert parts >= 3, logs[0].read_text()[-3000:]
    stores = [tmp_path / f"store-party{r}" for r in range(3)]
    assert list(stores[0].rglob("*.npy")) == []  # party 0 keeps seeds only
    assert all(list(store.rglob("*.npy")) for store in stores[1:])

    parties = _start(path, logs)
    try:

        def logits() -> torch.Tensor:
            with client("client") as user:
                return user.logits("tiny", IDS)

        served = _until_served(logits, parties, logs)
    finally:
        _stop(parties)
    assert "reloaded tiny" in logs[0].read_text()
    want = PrivateModel.from_hf(hf).logits(IDS).output
    assert served.shape == want.shape
    assert (served - want).abs().max() < EMBED_BOUND_SIM
    with torch.no_grad():
        plain = hf(IDS).logits.double()
    assert torch.equal(served.argmax(-1), plain.argmax(-1))
    assert_ports_free(path)


def test_launch_passes_the_weight_budget_to_its_serving_parties(tmp_path, monkeypatch) -> None:
    from veil.parties.cli import main

    assert main(["certs", "--out", str(tmp_path)]) == 0
    seen: list[list[str]] = []
    monkeypatch.setattr(
        "veil.parties.launch.launch", lambda config, extra, **kw: seen.append(extra)
    )
    config = str(tmp_path / "cluster.toml")
    main(["launch", "--config", config, "--serve", "--weight-budget-mib", "64"])
    main(["launch", "--config", config, "--serve"])
    flag = seen[0].index("--weight-budget-mib")
    assert seen[0][flag + 1] == "64"
    assert "--weight-budget-mib" not in seen[1]  # each party's own default
