"""Admission of client calls: a party's peer links can never be starved of server threads.

A party's gRPC server runs every call on one thread pool, and a client's Run holds its
thread until the request is done.  Without a bound, enough waiting clients take every
thread, the peer links' new streams queue behind them, and the request in progress
stalls until the peers time out and relink.  :class:`Admission` is a server interceptor
that counts the client calls in progress and answers RESOURCE_EXHAUSTED at once, on a
thread of its own call, when ``limit`` are already running; the server is sized with
``limit`` + :data:`LINK_THREADS` threads (:func:`server_threads`), so the link streams
always find one free.  Calls to other services (the party links) pass untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc

LINK_THREADS = 6
"""Threads kept for the party links: a stream per peer, plus a newer and an abandoned one
per peer while they relink."""
DEFAULT_CLIENT_CALLS = 32
"""Client calls in progress at a party (uploads, runs and fetches of all clients)."""
CLIENT_SERVICE = "/veil.Inference/"


def server_threads(admission: Admission) -> int:
    """The thread pool a party's server needs to admit ``admission.limit`` client calls."""
    return LINK_THREADS + admission.limit


class Admission(grpc.ServerInterceptor):
    """Bounds the client calls in progress at party ``rank`` to ``limit``."""

    def __init__(self, rank: int, limit: int = DEFAULT_CLIENT_CALLS):
        if limit < 1:
            raise ValueError(f"the client call limit must be at least 1, got {limit}")
        self.rank = rank
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.startswith(CLIENT_SERVICE):
            return handler
        if handler.response_streaming:
            behavior = self._admit_stream(handler.unary_stream or handler.stream_stream)
        else:
            behavior = self._admit(handler.unary_unary or handler.stream_unary)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(handler.request_streaming, handler.response_streaming)]
        return kind(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _refuse(self, context: grpc.ServicerContext) -> None:
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"party {self.rank}: busy ({self.limit} client calls in progress); retry later",
        )

    def _admit(self, behavior: Callable) -> Callable:
        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            if not self._slots.acquire(blocking=False):
                self._refuse(context)
            try:
                return behavior(request, context)
            finally:
                self._slots.release()

        return admitted

    def _admit_stream(self, behavior: Callable) -> Callable:
        def admitted(request: Any, context: grpc.ServicerContext) -> Any:
            if not self._slots.acquire(blocking=False):
                self._refuse(context)
            try:
                yield from behavior(request, context)
            finally:
                self._slots.release()

        return admitted
