"""Per-step output shares of streaming requests, from a party's executor to its client.

A request whose options say ``stream = "true"`` gets a :class:`StepStream` at each party:
the program publishes its share of every step's output there as the step ends (token by
token for generation), and the client's ``FetchSteps`` call relays each one at once.  The
executor and the call meet here, whichever comes first: the client opens ``FetchSteps``
right after its ``Run`` calls, so the call often arrives before the request starts, and a
short request may end before the call arrives.

The program reaches its stream through :func:`current_sink` (the executor runs one request
at a time per thread), so the program signature stays ``program(party, inputs, options)``.
The client stopping (cancelling ``FetchSteps``) is visible to the program as
:meth:`Sink.stop_requested`; whether it acts on it is the program's business (generation
does when the request is ``stoppable``, :mod:`veil.nn.stopping`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import torch

from veil.parties.wire import tensor_chunks
from veil.proto import veil_pb2

STREAM_OPTION = "stream"
"""Run option that opens a step stream for the request (``"true"``)."""
_POLL_SECONDS = 0.2
_local = threading.local()


@dataclass
class StepStream:
    """One request's published steps and who is still at either end."""

    steps: list[torch.Tensor] = field(default_factory=list)
    started: bool = False  # the executor began the program
    finished: bool = False
    error: str | None = None
    reading: bool = False  # a FetchSteps call is relaying it
    listener_gone: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)


@dataclass
class Sink:
    """What a running program sees of its request's stream."""

    streams: StepStreams
    request_id: str
    stream: StepStream

    def publish(self, share: torch.Tensor) -> None:
        """Hand the client this party's share of the step that just ended."""
        with self.streams.changed:
            self.stream.steps.append(share.detach().to("cpu"))
            self.streams.changed.notify_all()

    def stop_requested(self) -> bool:
        """Whether the client stopped listening to this party."""
        return self.stream.listener_gone.is_set()


def current_sink() -> Sink | None:
    """The stream of the request this thread is running, if it streams."""
    return getattr(_local, "sink", None)


class StepStreams:
    """The step streams of one party, by request id (thread-safe)."""

    def __init__(self, idle_timeout: float, keep_seconds: float):
        """``idle_timeout``: how long a reader waits for a step before giving up;
        ``keep_seconds``: how long a stream nobody reads is kept."""
        self.idle_timeout = idle_timeout
        self.keep_seconds = keep_seconds
        self.changed = threading.Condition()
        self._streams: dict[str, StepStream] = {}
        self._ended: dict[str, tuple[float, str | None]] = {}  # finished with no stream yet

    @contextmanager
    def serving(self, request_id: str, options: dict[str, str]) -> Iterator[None]:
        """Run a request's program with its sink current, if the request streams."""
        if options.get(STREAM_OPTION) != "true":
            yield
            return
        with self.changed:
            stream = self._open(request_id)
            stream.started = True
        _local.sink = Sink(self, request_id, stream)
        try:
            yield
        finally:
            _local.sink = None

    def finish(self, request_id: str, error: str | None = None) -> None:
        """The request ended (with ``error`` if it failed or was refused)."""
        with self.changed:
            stream = self._streams.get(request_id)
            if stream is None:  # a FetchSteps call arriving later must end at once
                self._forget_ended()
                self._ended[request_id] = (time.monotonic(), error)
                return
            if stream.finished:
                return
            stream.finished, stream.error = True, error
            if not stream.reading and stream.listener_gone.is_set():
                del self._streams[request_id]
            self.changed.notify_all()

    def fail_all(self, error: str) -> None:
        """End every open stream with ``error`` (the party failed or is stopping)."""
        with self.changed:
            ids = [r for r, s in self._streams.items() if not s.finished]
        for request_id in ids:
            self.finish(request_id, error)

    def follow(
        self, request_id: str, name: str, context: grpc.ServicerContext, party: str
    ) -> Iterator[veil_pb2.TensorChunk]:
        """Relay a request's steps as chunks of tensors tagged ``name``, until it ends;
        ``party`` names this party in errors."""
        with self.changed:
            ended = self._ended.pop(request_id, None)
            if ended is not None:  # the request ended before this call came: nothing to wait for
                if ended[1] is not None:
                    context.abort(grpc.StatusCode.ABORTED, ended[1])
                return
            stream = self._open(request_id)
            if stream.reading:
                context.abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"{party}: request {request_id!r} already has a FetchSteps call",
                )
            stream.reading = True
        context.add_callback(stream.listener_gone.set)
        sent = 0
        try:
            while True:
                steps, finished, error = self._wait(stream, sent, context, party)
                for share in steps:
                    yield from tensor_chunks(share, tag=name)
                sent += len(steps)
                if finished and sent == len(stream.steps):
                    if error is not None:
                        context.abort(grpc.StatusCode.ABORTED, error)
                    return
                if not context.is_active():
                    return
        finally:
            stream.listener_gone.set()
            with self.changed:
                stream.reading = False
                if stream.finished or not stream.started:
                    self._streams.pop(request_id, None)

    def _wait(
        self, stream: StepStream, sent: int, context: grpc.ServicerContext, party: str
    ) -> tuple[list[torch.Tensor], bool, str | None]:
        """Steps not yet relayed, once there are some or the stream ended."""
        deadline = time.monotonic() + self.idle_timeout
        with self.changed:
            while len(stream.steps) == sent and not stream.finished and context.is_active():
                left = deadline - time.monotonic()
                if left <= 0:
                    context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"{party}: no step of this request within "
                        f"{self.idle_timeout:g} s",
                    )
                self.changed.wait(min(left, _POLL_SECONDS))
            return stream.steps[sent:], stream.finished, stream.error

    def _open(self, request_id: str) -> StepStream:
        """The request's stream, created if new; drops streams nobody came for (lock held)."""
        self._forget_ended()
        horizon = time.monotonic() - self.keep_seconds
        for stale in [
            r for r, s in self._streams.items() if s.created < horizon and not s.reading
        ]:
            if self._streams[stale].finished or not self._streams[stale].started:
                del self._streams[stale]
        return self._streams.setdefault(request_id, StepStream())

    def _forget_ended(self) -> None:
        """Drop the marks of requests that ended more than ``keep_seconds`` ago (lock held)."""
        horizon = time.monotonic() - self.keep_seconds
        for gone in [r for r, (when, _) in self._ended.items() if when < horizon]:
            del self._ended[gone]

    def __len__(self) -> int:
        with self.changed:
            return len(self._streams)
