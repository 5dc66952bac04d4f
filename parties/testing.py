"""Pytest fixtures that run SPMD functions over real gRPC clusters (imported by conftests).

A conftest makes them available with ``from parties.testing import grpc_threads`` (and
``grpc_run``, ``grpc_cluster``).  Clusters start once per session and are reused; a
failed call rebuilds their links before the next one.

- ``grpc_threads``: three parties as threads of the test process, each with its own
  gRPC server and mutual-TLS links over loopback.  Accepts closures, so a suite written
  against ``run(fn, *args, **kwargs)`` (``mpc.simulate``) runs over it unchanged.
- ``grpc_run``: ``grpc_threads.run``, a drop-in for such a ``run`` fixture.
- ``grpc_cluster``: three spawned party processes with mTLS, as deployed; functions
  and arguments must be picklable (module-level functions).

:func:`serve_in_threads` starts three inference services as threads of the test process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from veil.mpc.party import Party
from veil.parties.config import ClusterConfig
from veil.parties.grpc_comm import GrpcCommunicator
from veil.parties.local import GrpcCluster, GrpcThreads
from veil.parties.service import InferenceService

TEST_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def grpc_threads() -> Iterator[GrpcThreads]:
    with GrpcThreads(timeout=TEST_TIMEOUT) as cluster:
        yield cluster


@pytest.fixture
def grpc_run(grpc_threads: GrpcThreads) -> Callable[..., list[Any]]:
    return grpc_threads.run


@pytest.fixture(scope="session")
def grpc_cluster() -> Iterator[GrpcCluster]:
    with GrpcCluster(timeout=TEST_TIMEOUT) as cluster:
        yield cluster


def serve_in_threads(
    config: ClusterConfig, services: list[InferenceService]
) -> tuple[ClusterConfig, list[GrpcCommunicator]]:
    """Link three parties on free loopback ports, each serving ``services[rank]``.

    Returns the config bound to those ports and the communicators (abort them to stop).
    """
    comms = [GrpcCommunicator(r, config, add_services=services[r].add_to) for r in range(3)]
    bound = config.with_addresses([f"localhost:{c.port}" for c in comms])

    def start(rank: int) -> None:
        comms[rank].connect(bound)
        services[rank].attach(Party(comms[rank]))

    threads = [threading.Thread(target=start, args=(r,)) for r in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return bound, comms
