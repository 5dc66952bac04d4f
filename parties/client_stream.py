"""The client side of a streaming request: each step's output as soon as the parties end it.

The client uploads and calls ``Run`` as for any request, with the option ``stream``, and
opens a ``FetchSteps`` call at each party; every party sends its share of a step the moment
the step ends, and the client reconstructs that step once it holds all three shares.  Only
the client ever sees a reconstructed step.

Closing the iterator early cancels the ``FetchSteps`` calls: the parties see that the
client stopped listening (a ``stoppable`` generation then ends at the next step), and the
client waits for the ``Run`` calls to end and fetches the final outputs so that the
parties free them.  A failure at any party ends the iterator with one
:class:`~veil.parties.client.InferenceError` naming the party at fault.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING

import grpc
import torch

from veil.mpc.communicator import WORLD_SIZE
from veil.nn.stopping import StepArrivals
from veil.parties.costs import RequestCost
from veil.parties.step_streams import STREAM_OPTION
from veil.parties.wire import Reassembler
from veil.proto import veil_pb2

if TYPE_CHECKING:
    from veil.parties.client import InferenceClient


def stream_steps(
    api: InferenceClient,
    program: str,
    inputs: dict[str, torch.Tensor],
    options: dict[str, str],
    output: str,
) -> Iterator[torch.Tensor]:
    """Run ``program`` streaming; yield each step of integer output ``output`` in order."""
    from veil.parties.client import _at_all

    api._verify_parties()
    start = time.perf_counter()
    request_id = uuid.uuid4().hex
    api._upload(request_id, inputs.items(), api.run_timeout)
    run = veil_pb2.RunRequest(
        request_id=request_id, program=program, options={**options, STREAM_OPTION: "true"}
    )
    runs = [api._stubs[rank].Run.future(run, timeout=api.run_timeout) for rank in range(WORLD_SIZE)]
    fetch = veil_pb2.FetchRequest(request_id=request_id, name=output)
    calls = [
        api._stubs[rank].FetchSteps(fetch, timeout=api.run_timeout) for rank in range(WORLD_SIZE)
    ]
    arrivals = StepArrivals(api.fxp)
    for rank, future in enumerate(runs):  # a refused or failed Run ends the wait at once
        future.add_done_callback(partial(_run_ended, rank, arrivals))
    for rank, call in enumerate(calls):
        threading.Thread(
            target=_relay, args=(rank, call, arrivals), name=f"steps-from-party{rank}", daemon=True
        ).start()
    try:
        yield from arrivals.steps(timeout=api.run_timeout)
    finally:
        for call in calls:
            call.cancel()
        replies = _at_all(runs)  # raises naming the party at fault if the request failed
        for name in replies[0].outputs:  # collected so that the parties free them
            _at_all([api._fetch_call(rank, request_id, name, api.run_timeout) for rank in range(3)])
        api.last_cost = RequestCost(time.perf_counter() - start, tuple(r.cost for r in replies))


def _run_ended(rank: int, arrivals: StepArrivals, future: grpc.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        arrivals.end(rank, future.exception())


def _relay(rank: int, call: grpc.Call, arrivals: StepArrivals) -> None:
    """Hand each step share from party ``rank``'s ``FetchSteps`` call to ``arrivals``."""
    reassembler = Reassembler()
    try:
        for chunk in call:
            tensor = reassembler.add(chunk)
            if tensor is not None:
                arrivals.put(rank, tensor)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:  # cancelled: the client stopped listening
            arrivals.end(rank, exc)
            return
    arrivals.end(rank)
