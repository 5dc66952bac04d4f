"""Admission: many clients at once never starve the party links; a busy party says so at once."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import grpc
import pytest
import torch

from veil.mpc.party import Party
from veil.parties.admission import Admission
from veil.parties.client import InferenceError
from veil.parties.grpc_comm import GrpcCommunicator
from veil.parties.local import local_config
from veil.parties.retry import retryable
from veil.parties.service import InferenceService
from veil.proto import veil_pb2

from .test_service import client, slow_square, square_plus

CLIENTS = 16
REQUESTS_EACH = 4


@contextlib.contextmanager
def serving_cluster(directory, programs=None, on_event=None, **comm_options):
    """Three serving parties (threads of this process): bound config, services, comms."""
    config = local_config(directory, timeout=10.0, connect_timeout=10.0)
    programs = programs or {"square_plus": square_plus, "slow": slow_square}
    services = [
        InferenceService(config, programs, queue_size=CLIENTS, on_event=on_event) for _ in range(3)
    ]
    comms = [
        GrpcCommunicator(r, config, add_services=services[r].add_to, **comm_options)
        for r in range(3)
    ]
    bound = config.with_addresses([f"localhost:{c.port}" for c in comms])

    def start(rank: int) -> None:
        comms[rank].connect(bound)
        services[rank].attach(Party(comms[rank]))  # the parties agree keys together

    threads = [threading.Thread(target=start, args=(r,)) for r in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        yield bound, services, comms
    finally:
        for service in services:
            service.stop()
        for comm in comms:
            comm.abort("test over")


def test_sixteen_concurrent_clients_all_served_without_relinking(tmp_path) -> None:
    with serving_cluster(tmp_path) as (config, services, _):
        results: dict[tuple[int, int], torch.Tensor] = {}
        errors: list[BaseException] = []

        clients = [client(config) for _ in range(CLIENTS)]
        for c in clients:  # TLS handshakes first: the load under test is the calls
            for channel in c._channels:
                grpc.channel_ready_future(channel).result(timeout=60)

        def work(index: int) -> None:
            try:
                for step in range(REQUESTS_EACH):
                    x = torch.tensor([float(index), float(step), -1.5])
                    options = {"bias": "0.5", "sleep": "0.1"}
                    results[index, step] = clients[index].infer("slow", {"x": x}, options)["y"]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        for c in clients:
            c.close()
        assert not errors, errors[:3]
        assert len(results) == CLIENTS * REQUESTS_EACH
        for (index, step), y in results.items():
            x = torch.tensor([float(index), float(step), -1.5], dtype=torch.float64)
            assert torch.allclose(y, x * x + 0.5, atol=1e-3), (index, step, y)
        assert [s.recoveries for s in services] == [0, 0, 0]


def test_calls_held_at_one_party_do_not_starve_it(tmp_path) -> None:
    """A client holds 8 Run calls at party 1 alone (they wait for a leader that never
    announces them): more than its old thread pool had for clients.  Another client's
    request is still served at once, and the links never stall."""
    with serving_cluster(tmp_path) as (config, services, _), client(config) as holder:
        held = [
            holder._stubs[1].Run.future(
                veil_pb2.RunRequest(request_id=uuid.uuid4().hex, program="square_plus"),
                timeout=120,
            )
            for _ in range(8)
        ]
        time.sleep(1.0)  # the held calls occupy their threads at party 1
        start = time.monotonic()
        with client(config) as c:
            y = c.infer("square_plus", {"x": torch.tensor([2.0, -3.0])}, timeout=30)["y"]
        elapsed = time.monotonic() - start
        for call in held:
            call.cancel()
        assert torch.allclose(y, torch.tensor([4.0, 9.0], dtype=torch.float64), atol=1e-3)
        assert elapsed < 8, elapsed
        assert [s.recoveries for s in services] == [0, 0, 0]


def test_client_calls_beyond_the_limit_are_refused_at_once(tmp_path) -> None:
    """Limit 1: a second client's call while a slow request runs gets RESOURCE_EXHAUSTED
    right away, and the party links (which are not client calls) keep working."""
    with serving_cluster(tmp_path, client_calls=1) as (bound, services, _):
        done: dict[str, object] = {}

        def slow() -> None:
            with client(bound) as c:
                done["y"] = c.infer("slow", {"x": torch.ones(2)}, {"sleep": "3"})["y"]

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(1.5)  # the slow request is running and holds each party's only slot
        start = time.monotonic()
        with client(bound) as c, pytest.raises(InferenceError) as info:
            c._infer_once("square_plus", {"x": torch.ones(2)}, None, timeout=10)
        assert time.monotonic() - start < 2
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy (1 client calls in progress)" in str(info.value)
        assert retryable(info.value.answers)
        thread.join(timeout=30)
        assert torch.allclose(done["y"], torch.ones(2, dtype=torch.float64), atol=1e-3)
        assert [s.recoveries for s in services] == [0, 0, 0]


def test_admission_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0, limit=0)
