"""StepStreams: a FetchSteps call that arrives after its request ended ends at once."""

from __future__ import annotations

import time

import grpc
import pytest

from veil.parties.step_streams import StepStreams


class _Aborted(Exception):
    pass


class _Context:
    """The part of grpc.ServicerContext that StepStreams.follow uses."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise _Aborted(details)

    def add_callback(self, callback) -> bool:
        return True

    def is_active(self) -> bool:
        return True


def test_a_late_call_for_a_refused_request_ends_at_once_and_leaves_nothing() -> None:
    """The request failed before its client's FetchSteps came (no stream existed then): the
    call ends with the failure at once instead of opening a stream that waits out the idle
    timeout (60 s here), and nothing is kept for it."""
    streams = StepStreams(idle_timeout=60.0, keep_seconds=60.0)
    streams.finish("r1", "party 1: max_new_tokens must be in 1..256, got 0")
    context = _Context()
    start = time.monotonic()
    with pytest.raises(_Aborted):
        list(streams.follow("r1", "tokens", context, "party 1"))
    assert time.monotonic() - start < 5
    assert context.code == grpc.StatusCode.ABORTED and "max_new_tokens" in context.details
    assert len(streams) == 0


def test_a_late_call_for_a_finished_request_returns_and_the_marks_expire() -> None:
    streams = StepStreams(idle_timeout=60.0, keep_seconds=0.05)
    streams.finish("done")
    assert list(streams.follow("done", "tokens", _Context(), "party 0")) == []
    assert len(streams) == 0
    streams.finish("old")
    time.sleep(0.1)
    streams.finish("new")  # drops the marks older than keep_seconds
    assert list(streams._ended) == ["new"]
