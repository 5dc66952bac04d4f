"""gRPC clusters for tests, started once per session and reused across tests.

- ``grpc_threads``: three parties as threads of the test process, each with its own
  gRPC server and mTLS links over loopback.  Accepts closures, so the protocol suite
  (written against ``run(fn, *args, **kwargs)``) runs over it unchanged: use
  ``grpc_run``.
- ``grpc_cluster``: three spawned party processes with mTLS, as deployed; functions
  must be picklable (module level).
"""

from __future__ import annotations

import pytest

from parties.local import GrpcCluster, GrpcThreads

TEST_TIMEOUT = 20.0


@pytest.fixture(scope="session")
def grpc_threads():
    with GrpcThreads(timeout=TEST_TIMEOUT) as cluster:
        yield cluster


@pytest.fixture
def grpc_run(grpc_threads):
    """Drop-in replacement for the ``run`` fixture (``mpc.simulate``) over real gRPC."""
    return grpc_threads.run


@pytest.fixture(scope="session")
def grpc_cluster():
    with GrpcCluster(timeout=TEST_TIMEOUT) as cluster:
        yield cluster
