"""Party processes that die, stall or fail: their peers fail fast, naming them, never hang."""

from __future__ import annotations

import os
import signal
import time

import pytest

from veil import mpc
from veil.mpc.communicator import PeerError, PeerTimeoutError
from veil.parties.health import check
from veil.parties.local import WorkerDied

STALL_TIMEOUT = 2.0


def killed_at_rank_2(party):
    if party.rank == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return party.comm.recv(2)


def stalled_at_rank_2(party):
    if party.rank == 2:
        time.sleep(STALL_TIMEOUT + 2)
        return "woke up"
    party.comm.timeout = STALL_TIMEOUT
    return party.comm.recv(2)


def fails_at_rank_0(party):
    if party.rank == 0:
        raise KeyError("no such weight")
    return party.comm.recv(0)


def test_protocol_over_processes_matches_simulation(grpc_cluster) -> None:
    got = grpc_cluster.run(check)
    assert got == mpc.simulate(check)
    assert all("health check ok" in line for line in got)


def test_killed_party_named_within_timeout(grpc_cluster) -> None:
    start = time.monotonic()
    outcomes = grpc_cluster.run_all(killed_at_rank_2)
    elapsed = time.monotonic() - start
    assert elapsed < grpc_cluster.config.timeout / 2  # detected from the broken link, not a timeout
    assert isinstance(outcomes[2].error, WorkerDied)
    for rank in (0, 1):
        error = outcomes[rank].error
        assert isinstance(error, PeerError) and error.peer == 2, error
    assert grpc_cluster.run(check)[2].startswith("party 2: health check ok")  # respawned


def test_stalled_party_named_after_timeout(grpc_cluster) -> None:
    start = time.monotonic()
    outcomes = grpc_cluster.run_all(stalled_at_rank_2)
    for rank in (0, 1):
        error = outcomes[rank].error
        assert isinstance(error, PeerTimeoutError) and error.peer == 2, error
        assert f"within {STALL_TIMEOUT:g} s" in str(error)
    assert outcomes[2].result == "woke up"
    assert time.monotonic() - start < STALL_TIMEOUT + 6


def test_failure_reraised_with_party_traceback(grpc_cluster) -> None:
    with pytest.raises(KeyError, match="no such weight") as info:
        grpc_cluster.run(fails_at_rank_0)
    assert any("traceback at party 0" in note for note in info.value.__notes__)
    assert grpc_cluster.run(check)[0].startswith("party 0: health check ok")


def hung_at_rank_2(party):
    if party.rank == 2:
        time.sleep(600)
    party.comm.timeout = 1.0
    return party.comm.recv(2)


def test_hung_party_process_is_killed_after_grace(grpc_cluster, monkeypatch) -> None:
    monkeypatch.setattr(grpc_cluster, "grace", 1.0)
    start = time.monotonic()
    outcomes = grpc_cluster.run_all(hung_at_rank_2)
    assert time.monotonic() - start < 10
    assert isinstance(outcomes[0].error, PeerTimeoutError) and outcomes[0].error.peer == 2
    assert isinstance(outcomes[2].error, PeerError) and "still busy" in str(outcomes[2].error)
    assert grpc_cluster.run(check)[2].startswith("party 2: health check ok")
