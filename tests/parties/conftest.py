"""The gRPC cluster fixtures of :mod:`parties.testing` (session-scoped, reused)."""

from parties.testing import grpc_cluster, grpc_run, grpc_threads

__all__ = ["grpc_cluster", "grpc_run", "grpc_threads"]
