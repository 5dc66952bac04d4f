"""Private inference over the client API: share, run, reconstruct; refusals keep the parties in step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from veil.parties.client import InferenceClient, InferenceError
from veil.parties.config import load_config
from veil.parties.launch import stop_launcher
from veil.parties.local import local_config
from veil.parties.service import InferenceService
from veil.parties.testing import serve_in_threads

from .test_cli import REPO, assert_ports_free, free_ports


def square_plus(party, inputs, options):
    x = inputs["x"]
    return {"y": x * x + float(options.get("bias", "0")), "x": x}


def slow_square(party, inputs, options):
    time.sleep(float(options.get("sleep", "1")))
    return square_plus(party, inputs, options)


def fails_at_rank_2(party, inputs, options):
    if party.rank == 2:
        raise ValueError("bad weights at party 2")
    return square_plus(party, inputs, options)


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    """Three serving parties (threads of this process) and the bound cluster config."""
    config = local_config(tmp_path_factory.mktemp("serve"), timeout=5.0)
    programs = {"square_plus": square_plus, "slow": slow_square, "fails": fails_at_rank_2}
    services = [InferenceService(config, programs) for _ in range(3)]
    bound, comms = serve_in_threads(config, services)
    yield bound, services
    for comm in comms:
        comm.abort("test over")


def client(config, name: str = "client") -> InferenceClient:
    directory = config.ca.parent
    return InferenceClient(config, cert=directory / f"{name}.pem", key=directory / f"{name}.key")


def test_infer_round_trip(serving) -> None:
    config, _ = serving
    x = torch.tensor([[1.5, -2.0], [0.25, 3.0]])
    with client(config) as c:
        out = c.infer("square_plus", {"x": x}, {"bias": "1"})
        again = c.infer("square_plus", {"x": -x})
    assert set(out) == {"x", "y"}
    assert torch.allclose(out["y"], (x * x + 1).double(), atol=1e-3)
    assert torch.allclose(again["y"], (x * x).double(), atol=1e-3)


def test_unknown_program_refused_and_parties_stay_in_step(serving) -> None:
    config, _ = serving
    with client(config) as c:
        with pytest.raises(InferenceError) as info:
            c.infer("no_such_program", {"x": torch.ones(2)})
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert torch.allclose(
            c.infer("square_plus", {"x": torch.ones(2)})["y"], torch.ones(2).double()
        )


def test_full_queue_refuses_clearly_and_queued_requests_run_in_order(serving, monkeypatch) -> None:
    """Queue of 2 per party: a running and a waiting request fit, a third is refused at
    once; a client that retries (the default) is served once the queue drains."""
    config, services = serving
    for service in services:
        monkeypatch.setattr(service, "queue_size", 2)
    results: dict[int, object] = {}

    def request(index: int, program: str, retry: bool = True) -> None:
        try:
            with client(config) as c:
                infer = c.infer if retry else c._infer_once
                inputs = {"x": torch.full((2,), float(index))}
                results[index] = infer(program, inputs, None, timeout=20)["y"]
        except InferenceError as exc:
            results[index] = exc

    threads = [threading.Thread(target=request, args=(0, "slow"))]
    threads[0].start()
    time.sleep(0.5)  # request 0 is running
    threads.append(threading.Thread(target=request, args=(1, "square_plus")))
    threads[1].start()
    time.sleep(0.3)  # request 1 is waiting
    request(2, "square_plus", retry=False)
    request(3, "square_plus")
    for thread in threads:
        thread.join(timeout=30)
    assert isinstance(results[2], InferenceError), results
    assert results[2].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue full" in str(results[2])
    assert torch.allclose(results[0], torch.zeros(2, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(results[1], torch.ones(2, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(results[3], torch.full((2,), 9.0, dtype=torch.float64), atol=1e-3)
    log = [entry.request_id for entry in services[1].log[-3:]]
    programs = [entry.program for entry in services[1].log[-3:]]
    assert programs == ["slow", "square_plus", "square_plus"], log


def test_party_certificate_is_not_a_client(serving) -> None:
    config, _ = serving
    with client(config, name="party1") as c, pytest.raises(InferenceError) as info:
        c.infer("square_plus", {"x": torch.ones(2)})
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_failing_program_fails_the_request_then_parties_relink(serving) -> None:
    """Party 2's program raises: the client hears it (naming party 2); the parties
    rebuild their links and serve the next request."""
    config, services = serving
    before = [s.recoveries for s in services]
    with client(config) as c, pytest.raises(InferenceError) as info:
        c.infer("fails", {"x": torch.ones(2)})
    assert info.value.rank == 2 and "bad weights at party 2" in str(info.value)
    deadline = time.monotonic() + 30
    while True:
        try:
            with client(config) as c:
                out = c.infer("square_plus", {"x": torch.full((2,), 3.0)})
            break
        except InferenceError as exc:  # unavailable or refused while the parties relink
            assert time.monotonic() < deadline, exc
            time.sleep(0.2)
    assert torch.allclose(out["y"], torch.full((2,), 9.0, dtype=torch.float64), atol=1e-3)
    # At least one relink each (a loaded machine may time out once more while relinking).
    assert all(s.recoveries > n for s, n in zip(services, before))
    assert not any(s.stopped.is_set() for s in services)


def test_launch_serve_and_infer_cli(tmp_path) -> None:
    from veil.parties.cli import main

    addresses = [f"--address=localhost:{port}" for port in free_ports(3)]
    assert main(["certs", "--out", str(tmp_path), *addresses]) == 0
    config_path = tmp_path / "cluster.toml"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil.parties.cli",
            "launch",
            "--config",
            str(config_path),
            "--serve",
            "--program=sq=tests.parties.test_service:square_plus",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        torch.save(torch.tensor([2.0, -3.0]), tmp_path / "x.pt")
        args = [
            "infer",
            "--config",
            str(config_path),
            "--program",
            "sq",
            "--input",
            f"x={tmp_path / 'x.pt'}",
            "--option",
            "bias=0.5",
            "--out",
            str(tmp_path / "y.pt"),
        ]
        deadline = time.monotonic() + 30
        while main(args) != 0:  # the parties are still starting
            assert time.monotonic() < deadline and launcher.poll() is None
            time.sleep(0.5)
        out = torch.load(tmp_path / "y.pt", weights_only=True)
        assert torch.allclose(out["y"], torch.tensor([4.5, 9.5], dtype=torch.float64), atol=1e-3)
        children = _children(launcher.pid)
        assert len(children) == 3
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            _, err = launcher.communicate(timeout=30)
        finally:
            stop_launcher(launcher)  # escalates if SIGINT did not stop it
    assert launcher.returncode == 130, err
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert_ports_free(config_path)
    assert load_config(config_path).clients == ("client",)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]
