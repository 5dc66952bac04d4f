"""Relinking converges: a party killed twice in quick succession, again and again, and the
cluster settles and serves correctly, with bounded error texts."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from subprocess import STDOUT

import grpc
import pytest
import torch

from veil.mpc.communicator import PeerError
from veil.parties.client import InferenceClient, InferenceError
from veil.parties.config import load_config
from veil.parties.grpc_comm import HELLO_DTYPE, MAX_REASON_CHARS, GrpcCommunicator
from veil.parties.local import GrpcThreads, local_config
from veil.parties.wire import tensor_chunks
from veil.proto import veil_pb2, veil_pb2_grpc

from .test_admission import serving_cluster
from .test_cli import assert_ports_free, free_ports, veil
from .test_grpc_comm import channel_as, stream
from .test_service import client, fails_at_rank_2, square_plus

SETTLE_SECONDS = 4.0  # quiet time after a success in which no party may relink again
MAX_LINE = 2000  # no log line (relink reasons included) grows beyond this


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait_for_new_party(launcher: subprocess.Popen, old: list[int], deadline: float) -> list[int]:
    while True:
        pids = _children(launcher.pid)
        if len(pids) == 3 and pids != old:
            return pids
        assert time.monotonic() < deadline and launcher.poll() is None
        time.sleep(0.05)


def _wait_for_line(log: Path, text: str, deadline: float) -> None:
    """Until ``log`` has one more line containing ``text`` than when called."""
    seen = log.read_text().count(text)
    while log.read_text().count(text) == seen:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def _serve_after_double_kills(tmp_path: Path, cycles: int) -> None:
    from veil.parties.cli import main

    addresses = [f"--address=localhost:{port}" for port in free_ports(3)]
    assert main(["certs", "--out", str(tmp_path), *addresses]) == 0
    path = tmp_path / "cluster.toml"
    text = path.read_text().replace("timeout = 60.0", "timeout = 8.0")
    path.write_text(text.replace("connect_timeout = 30.0", "connect_timeout = 8.0"))
    config = load_config(path)
    log = tmp_path / "launch.log"
    program = "--program=sq=tests.parties.test_service:square_plus"
    with log.open("w") as sink:
        launcher = veil(
            "launch", "--config", str(path), "--serve", program, stdout=sink, stderr=STDOUT
        )
    x = torch.tensor([1.5, -2.0])
    expected = (x * x).double()

    def served(deadline_s: float) -> torch.Tensor:
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                with InferenceClient(
                    config, tmp_path / "client.pem", tmp_path / "client.key", run_timeout=10
                ) as client:
                    return client.infer("sq", {"x": x})["y"]
            except InferenceError as exc:
                assert time.monotonic() < deadline, f"{exc}\n{log.read_text()[-3000:]}"
                assert launcher.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)

    try:
        assert torch.allclose(served(60), expected, atol=1e-3)
        for _ in range(cycles):
            pids = _children(launcher.pid)
            os.kill(pids[2], signal.SIGKILL)
            pids = _wait_for_new_party(launcher, pids, time.monotonic() + 10)
            _wait_for_line(log, "party 2: serving", time.monotonic() + 60)
            time.sleep(random.uniform(0.0, 1.0))  # its peers are relinking to it
            os.kill(pids[2], signal.SIGKILL)
            _wait_for_new_party(launcher, pids, time.monotonic() + 10)
            _wait_for_line(log, "party 2: serving", time.monotonic() + 60)
        assert torch.allclose(served(60), expected, atol=1e-3)
        relinks = log.read_text().count("relinking")
        time.sleep(SETTLE_SECONDS)
        assert log.read_text().count("relinking") == relinks, log.read_text()[-3000:]
        assert torch.allclose(served(10), expected, atol=1e-3)
        longest = max(len(line) for line in log.read_text().splitlines())
        assert longest < MAX_LINE, longest
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=30)
    assert_ports_free(path)


def test_double_kills_settle(tmp_path) -> None:
    _serve_after_double_kills(tmp_path, cycles=2)


@pytest.mark.slow
def test_ten_double_kills_settle(tmp_path) -> None:
    _serve_after_double_kills(tmp_path, cycles=10)


def test_rejected_stream_then_failure_settles(tmp_path) -> None:
    """A stream that claims another sender is rejected; the next failure relinks the
    parties once, and they settle and serve again instead of relinking each other."""
    events: list[str] = []
    programs = {"square_plus": square_plus, "fails": fails_at_rank_2}
    with serving_cluster(tmp_path, programs=programs, on_event=events.append) as cluster:
        config, services, comms = cluster
        rogue = list(tensor_chunks(torch.arange(3), sender=1, seq=0))
        with channel_as(config, comms[0].port, "party2") as channel, pytest.raises(grpc.RpcError):
            stream(channel, rogue)
        with client(config) as c, pytest.raises(InferenceError, match="bad weights"):
            c.infer("fails", {"x": torch.ones(2)})
        x = torch.tensor([3.0, -1.0])
        deadline = time.monotonic() + 30
        while True:
            try:
                with client(config) as c:
                    y = c.infer("square_plus", {"x": x})["y"]
                break
            except InferenceError as exc:
                assert time.monotonic() < deadline, (exc, events[-5:])
                time.sleep(0.2)
        assert torch.allclose(y, (x * x).double(), atol=1e-3)
        settled = [s.recoveries for s in services]
        time.sleep(SETTLE_SECONDS)
        assert [s.recoveries for s in services] == settled, events[-6:]
        assert max(settled) <= 3, events
        assert max(len(line) for line in events) < MAX_LINE


def _hello(sender: int, generation: int) -> veil_pb2.TensorChunk:
    return veil_pb2.TensorChunk(sender=sender, dtype=HELLO_DTYPE, seq=generation)


@pytest.fixture
def lone(tmp_path):
    """Party 0 alone at link generation 2, and the config to reach it as a peer."""
    config = local_config(tmp_path, timeout=5.0, connect_timeout=1.0)
    comm = GrpcCommunicator(0, config)
    comm.generation = 2
    yield config, comm
    comm.abort("test over")


def test_stream_of_an_older_generation_is_refused(lone) -> None:
    config, comm = lone
    chunks = [_hello(2, 1), *tensor_chunks(torch.arange(3), sender=2, seq=0)]
    with channel_as(config, comm.port, "party2") as channel, pytest.raises(grpc.RpcError) as rpc:
        stream(channel, chunks)
    assert rpc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "at link generation 2; a stream of generation 1 is stale" in rpc.value.details()
    assert comm.poll(2, 0.5) is None  # nothing of the stale stream was delivered


def test_stream_of_a_newer_generation_makes_a_waiting_receive_fail_at_once(lone) -> None:
    config, comm = lone
    with channel_as(config, comm.port, "party2") as channel:
        call = veil_pb2_grpc.PartyLinkStub(channel).Stream.future(iter([_hello(2, 5)]))
        start = time.monotonic()
        with pytest.raises(PeerError, match="opened link generation 5") as info:
            comm.recv(2)  # would wait the 5 s timeout for a stream of generation 2
        call.result(timeout=5)
    assert info.value.peer == 2 and time.monotonic() - start < 3
    assert "opened link generation 5" in comm.gone[2]


def test_relink_reason_sent_to_peers_is_bounded() -> None:
    """A long chain of failures cannot grow what a relinking party tells its peers."""
    with GrpcThreads(timeout=5.0) as cluster:
        comms = cluster._connected()
        relinked = threading.Thread(target=comms[0].relink, args=("x" * 20_000,))
        relinked.start()
        with pytest.raises(PeerError, match="aborted: relinking: xxx") as info:
            comms[1].recv(0)
        relinked.join(timeout=10)
    assert len(str(info.value)) < MAX_REASON_CHARS + 100
