"""The gRPC cluster fixtures of :mod:`veil.parties.testing` (session-scoped, reused)."""

from veil.parties.testing import grpc_cluster, grpc_run, grpc_threads

__all__ = ["grpc_cluster", "grpc_run", "grpc_threads"]
