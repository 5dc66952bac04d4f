"""A request runs only when all three parties hold it; a partial Run fails alone, quickly."""

from __future__ import annotations

import threading
import time
import uuid

import grpc
import pytest
import torch

from veil.proto import veil_pb2

from .test_admission import serving_cluster
from .test_service import client

CONNECT_TIMEOUT = 10.0  # serving_cluster's config


def test_run_missing_at_one_party_fails_alone_naming_it(tmp_path) -> None:
    with serving_cluster(tmp_path) as (config, services, _):
        other: dict[str, object] = {}

        def other_client() -> None:
            time.sleep(0.5)  # queued behind the partial request at the leader
            with client(config) as c:
                other["y"] = c.infer("square_plus", {"x": torch.full((2,), 2.0)})["y"]

        with client(config) as c:
            request_id = uuid.uuid4().hex
            c._upload(request_id, [("x", torch.ones(2))], timeout=30)
            run = veil_pb2.RunRequest(request_id=request_id, program="square_plus")
            start = time.monotonic()
            calls = {rank: c._stubs[rank].Run.future(run, timeout=60) for rank in (0, 2)}
            thread = threading.Thread(target=other_client)
            thread.start()
            errors = {}
            for rank, call in calls.items():
                with pytest.raises(grpc.RpcError) as info:
                    call.result()
                errors[rank] = info.value
            elapsed = time.monotonic() - start
        thread.join(timeout=60)
        for rank, error in errors.items():
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, (rank, error.details())
            assert "party 1 did not receive the Run call" in error.details()
        assert elapsed < CONNECT_TIMEOUT + 5
        assert torch.allclose(other["y"], torch.full((2,), 4.0, dtype=torch.float64), atol=1e-3)
        assert [s.recoveries for s in services] == [0, 0, 0]
