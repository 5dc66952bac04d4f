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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from veil.parties.local import GrpcCluster, GrpcThreads

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
