"""The client-facing inference service that each party runs next to its peer links.

A *program* is an SPMD function ``program(party, inputs, options) -> outputs`` over
named secret shares (``dict[str, ArithShare]`` in and out; ``options`` is a
``dict[str, str]``).  A client uploads its share pairs to every party, calls ``Run``
at all three, and fetches the output pairs (:mod:`parties.client`).

The three parties must run requests in the same order, or their messages would mix.
So before running, the parties exchange a digest of (request, program, options) and
whether they are ready (inputs uploaded, program known); on any disagreement all
three refuse the request and stay in step.  One request runs at a time per party;
two clients racing each other get refusals, never mixed results.  A program that
raises leaves the links in an unknown state: the party aborts them (its peers fail
with a PeerError naming it) and the service stops, so a launcher restarts cleanly.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import torch

from mpc.arith import ArithShare
from mpc.party import Party
from parties import tls
from parties.config import ClusterConfig
from parties.wire import Reassembler, WireError, tensor_chunks
from proto import veil_pb2, veil_pb2_grpc

Program = Callable[[Party, dict[str, ArithShare], dict[str, str]], dict[str, ArithShare]]
_DIGEST_BYTES = 16


class RequestRefused(RuntimeError):
    """The parties did not agree to run a request (nothing ran, links still in step)."""


@dataclass
class _Request:
    inputs: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)
    outputs: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)


class InferenceService(veil_pb2_grpc.InferenceServicer):
    """Upload / Run / Fetch for one party; :meth:`attach` the Party once it exists."""

    def __init__(self, config: ClusterConfig, programs: dict[str, Program]):
        self.config = config
        self.programs = dict(programs)
        self.party: Party | None = None
        self.failed: BaseException | None = None
        self.stopped = threading.Event()
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()  # guards _requests
        self._run_lock = threading.Lock()  # one program at a time

    def attach(self, party: Party) -> None:
        self.party = party

    def add_to(self, server: grpc.Server) -> None:
        veil_pb2_grpc.add_InferenceServicer_to_server(self, server)

    # -- RPCs ----------------------------------------------------------------------
    def Upload(self, request_iterator, context):
        self._authorize(context)
        reassembler = Reassembler()
        names: list[str] = []
        try:
            for message in request_iterator:
                tensor = reassembler.add(message.chunk)
                if tensor is None:
                    continue
                name = message.chunk.tag
                if tensor.dtype != torch.int64 or tensor.dim() < 1 or tensor.shape[0] != 2:
                    raise WireError(f"share {name!r} must be an int64 pair of shape (2, ...)")
                with self._lock:
                    request = self._requests.setdefault(message.request_id, _Request())
                    request.inputs[name] = (tensor, message.frac_bits)
                names.append(name)
        except WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed upload: {exc}")
        if reassembler.in_progress:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "upload ended mid-tensor")
        return veil_pb2.UploadReply(names=names)

    def Run(self, request, context):
        self._authorize(context)
        if self.party is None or self.failed is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "party is not serving")
        options = dict(request.options)
        with self._run_lock:
            try:
                outputs = self._run(request.request_id, request.program, options)
            except RequestRefused as exc:
                with self._lock:
                    self._requests.pop(request.request_id, None)
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            except Exception as exc:  # noqa: BLE001 - the links are now unusable
                self.failed = exc
                assert self.party is not None
                self.party.comm.abort(f"{type(exc).__name__}: {exc}", keep_server=True)
                self.stopped.set()
                context.abort(
                    grpc.StatusCode.INTERNAL, f"party failed: {type(exc).__name__}: {exc}"
                )
        return veil_pb2.RunReply(
            outputs=list(outputs), frac_bits={name: frac for name, (_, frac) in outputs.items()}
        )

    def Fetch(self, request, context) -> Iterator[veil_pb2.TensorChunk]:
        self._authorize(context)
        with self._lock:
            entry = self._requests.get(request.request_id)
            found = entry.outputs.pop(request.name, None) if entry else None
            if entry is not None and not entry.outputs and not entry.inputs:
                del self._requests[request.request_id]
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no output {request.name!r} for this request")
        yield from tensor_chunks(found[0], tag=request.name)

    # -- helpers ---------------------------------------------------------------------
    def _run(self, request_id: str, program: str, options: dict[str, str]) -> dict:
        party = self.party
        assert party is not None
        with self._lock:
            request = self._requests.get(request_id)
        ready = request is not None and program in self.programs
        self._agree(party, request_id, program, options, ready)
        assert request is not None
        inputs = {
            name: ArithShare(party, pair.to(party.device), frac)
            for name, (pair, frac) in request.inputs.items()
        }
        request.inputs.clear()
        with party.comm.scope(program):
            results = self.programs[program](party, inputs, options)
        request.outputs = {
            name: (share.data.to("cpu"), share.frac_bits) for name, share in results.items()
        }
        return request.outputs

    @staticmethod
    def _agree(
        party: Party, request_id: str, program: str, options: dict[str, str], ready: bool
    ) -> None:
        text = "\0".join([request_id, program, *(f"{k}={v}" for k, v in sorted(options.items()))])
        digest = hashlib.sha256(text.encode()).digest()[:_DIGEST_BYTES] + bytes([ready])
        mine = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
        comm = party.comm
        with comm.scope("request"):
            comm.send(comm.next_rank, mine)
            comm.send(comm.prev_rank, mine)
            theirs = [comm.recv(comm.prev_rank), comm.recv(comm.next_rank)]
        if not all(torch.equal(mine[:-1], t[:-1].cpu()) for t in theirs):
            raise RequestRefused("the parties were asked to run different requests; retry")
        if not all(int(t[-1]) for t in [mine, *theirs]):
            raise RequestRefused(
                f"not every party has the inputs of request {request_id!r} and program {program!r}"
            )

    def _authorize(self, context: grpc.ServicerContext) -> None:
        if self.config.insecure:
            return
        name = tls.caller_name(context)
        if name not in self.config.clients:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{name!r} is not a client of this cluster"
            )


def start_serving(
    config: ClusterConfig,
    rank: int,
    programs: dict[str, Program],
    device: torch.device | str = "cpu",
) -> tuple[InferenceService, Party]:
    """Connect party ``rank`` to its peers and serve ``programs`` to clients (non-blocking)."""
    from mpc.fixedpoint import FixedPoint
    from parties.grpc_comm import connect_party

    service = InferenceService(config, programs)
    comm = connect_party(config, rank, device=device, add_services=service.add_to)
    try:
        party = Party(comm, fxp=FixedPoint(config.frac_bits), device=device)
    except BaseException as exc:
        comm.abort(f"{type(exc).__name__}: {exc}")
        raise
    service.attach(party)
    return service, party
