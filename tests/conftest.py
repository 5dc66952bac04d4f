"""Shared fixtures: ``run`` executes an SPMD function on three parties.

The protocol suite is written against ``run`` so that the same tests can run over
any transport (the in-memory simulation here; gRPC in tests/parties).
"""

from __future__ import annotations

import os

import pytest
import torch

from veil import mpc
from veil.parties.testing import grpc_threads  # noqa: F401 - the session's gRPC cluster

# Models load from installed packages only; never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(params=["memory", "grpc"])
def run(request):
    """The three parties as threads with in-memory links, or over gRPC with mutual TLS."""
    if request.param == "memory":
        return mpc.simulate
    return request.getfixturevalue("grpc_threads").run


@pytest.fixture
def rng() -> torch.Generator:
    """Seeded generator for *test inputs* only (protocol randomness never uses it)."""
    return torch.Generator().manual_seed(1234)
