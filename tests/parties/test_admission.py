"""Admission: many clients at once never starve the party links; a busy party says so at once."""

from __future__ import annotations

import threading
import time

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

from .test_service import client, slow_square, square_plus

CLIENTS = 16
REQUESTS_EACH = 4


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
    return bound, services, comms


@pytest.fixture
def cluster(tmp_path):
    bound, services, comms = serving_cluster(tmp_path)
    yield bound, services
    for service in services:
        service.stop()
    for comm in comms:
        comm.abort("test over")


def test_sixteen_concurrent_clients_all_served_without_relinking(cluster) -> None:
    config, services = cluster
    results: dict[tuple[int, int], torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            with client(config) as c:
                for step in range(REQUESTS_EACH):
                    x = torch.tensor([float(index), float(step), -1.5])
                    results[index, step] = c.infer(
                        "slow", {"x": x}, {"bias": "0.5", "sleep": "0.1"}
                    )["y"]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors[:3]
    assert len(results) == CLIENTS * REQUESTS_EACH
    for (index, step), y in results.items():
        x = torch.tensor([float(index), float(step), -1.5], dtype=torch.float64)
        assert torch.allclose(y, x * x + 0.5, atol=1e-3), (index, step, y)
    assert [s.recoveries for s in services] == [0, 0, 0]


def test_client_calls_beyond_the_limit_are_refused_at_once(tmp_path) -> None:
    """Limit 1: a second client's call while a slow request runs gets RESOURCE_EXHAUSTED
    right away, and the party links (which are not client calls) keep working."""
    bound, services, comms = serving_cluster(tmp_path, client_calls=1)
    try:
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
    finally:
        for service in services:
            service.stop()
        for comm in comms:
            comm.abort("test over")


def test_admission_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0, limit=0)
