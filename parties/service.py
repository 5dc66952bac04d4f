"""The client-facing inference service that each party runs next to its peer links.

A *program* is an SPMD function ``program(party, inputs, options) -> outputs`` over
named secret shares (``dict[str, ArithShare]`` in and out; ``options`` is a
``dict[str, str]``).  A client uploads its share pairs to every party, calls ``Run``
at all three, and fetches the output pairs (:mod:`veil.parties.client`).  An input
uploaded seed-compressed (parts named ``s:<k>:<name>`` / ``c:<k>:<name>``, see
:mod:`veil.mpc.seeded`) reaches the program as a :class:`~veil.mpc.seeded.Payload`, which
the program expands once it knows the value's shape (a model's weights).

The three parties must run requests in the same order, or their messages would mix.
Run calls from any number of clients are queued (bounded: a full queue answers
RESOURCE_EXHAUSTED at once) and one executor thread per party runs them one at a
time.  Party 0 is the *leader*: it takes requests in the order their Run calls
reached it and announces each request id to parties 1 and 2 over the party links;
they run the announced request when its Run call has reached them too.  Before
running, the three exchange a digest of (request, program, options, input shapes)
and whether they are ready (:mod:`veil.parties.agreement`): a follower waits at most
``connect_timeout`` for its own Run call, so a Run that reached only some parties is
refused, naming the party it missed; on any disagreement all three refuse that
request and stay in step for the next one.

A program that raises, or a peer that fails or stalls past the timeout, leaves the
links in an unknown state.  The party then fails that request (INTERNAL, naming the
cause) and every queued one (UNAVAILABLE), abandons its links -- its peers notice and
do the same -- and relinks (:meth:`GrpcCommunicator.relink`) with fresh PRG keys,
retrying with a growing backoff until its peers answer.  Uploads and shared models
stay in memory, so the next request is served as usual.  A party that was killed and
restarted reloads its shares from its store (:mod:`veil.parties.durable`) and relinks
up to its peers' link generation.  Waiting clients never hang: their calls end with
the error.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import torch

from veil.mpc.arith import ArithShare
from veil.mpc.communicator import PeerError, Traffic
from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.party import Party
from veil.mpc.seeded import Payload, check_part, gather, is_part
from veil.parties.agreement import NO_RUN, NOT_READY, READY, RequestRefused, agree
from veil.parties.authz import Authz, ModelOwner, SessionOwner
from veil.parties.config import ClusterConfig
from veil.parties.grpc_comm import GrpcCommunicator, bounded, connect_party
from veil.parties.retry import Backoff
from veil.parties.step_streams import StepStreams
from veil.parties.upload_limits import UploadLimits, UploadRefused
from veil.parties.wire import Reassembler, WireError, tensor_chunks
from veil.proto import veil_pb2, veil_pb2_grpc

Program = Callable[
    [Party, dict[str, "ArithShare | Payload"], dict[str, str]], dict[str, ArithShare]
]
Check = Callable[[str, dict[str, str]], "str | None"]
"""``check(program, options)``: why this party cannot run a request now, or None."""
Validate = Callable[
    [str, dict[str, str], dict[str, tuple["tuple[int, ...] | None", int]]], "str | None"
]
"""``validate(program, options, {input: (shape, frac_bits)})``: why a request is malformed,
or None; asked when its Run call arrives, so a malformed request never reaches a program.
The shape of a seed-compressed input is None (party 0 receives only its seeds)."""

_POLL_SECONDS = 0.2
_RELINK_FIRST_PAUSE_SECONDS = 0.05
_RELINK_MAX_PAUSE_SECONDS = 5.0
DEFAULT_QUEUE_SIZE = 16
LEADER = 0


@dataclass
class _Request:
    owner: str | None  # the identity that created it (veil.parties.authz)
    inputs: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)
    outputs: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)
    created: float = field(default_factory=time.monotonic)
    charged: int = 0  # input bytes counted against the upload limits


@dataclass
class _Job:
    """A Run call waiting for the executor; ``done`` is set with a reply or an error."""

    request_id: str
    program: str
    options: dict[str, str]
    owner: str | None
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    reply: veil_pb2.RunReply | None = None
    code: grpc.StatusCode | None = None
    message: str = ""

    def finish(self, reply: veil_pb2.RunReply | None = None, code=None, message: str = "") -> None:
        self.reply, self.code, self.message = reply, code, message
        self.done.set()


@dataclass
class RequestLog:
    """What one party spent on a request (for logs and benchmarks)."""

    request_id: str
    program: str
    ok: bool
    wall_s: float
    traffic: Traffic
    wire_bytes_sent: int
    input_bytes: int = 0
    """Bytes of input shares this party received for the request (its uploads' data)."""


class InferenceService(veil_pb2_grpc.InferenceServicer):
    """Upload / Run / Fetch for one party; :meth:`attach` the Party once it exists."""

    def __init__(
        self,
        config: ClusterConfig,
        programs: dict[str, Program],
        *,
        check: Check | None = None,
        validate: Validate | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        on_request: Callable[[RequestLog], None] | None = None,
        on_event: Callable[[str], None] | None = None,
        recover: bool = True,
        model_owner: ModelOwner | None = None,
        session_owner: SessionOwner | None = None,
    ):
        self.config = config
        self.programs = dict(programs)
        self.check = check
        self.validate = validate
        self.queue_size = queue_size
        self.on_request = on_request
        self.on_event = on_event
        self.recover = recover
        self.authz = Authz(config, model_owner, session_owner)
        self.limits = UploadLimits(config.upload_limit_per_client, config.upload_limit_per_party)
        self.recoveries = 0  # how often the links were rebuilt after a failure
        self.party: Party | None = None
        self.failed: BaseException | None = None
        self.stopped = threading.Event()
        self.log: list[RequestLog] = []  # the most recent requests (bounded)
        self._requests: dict[str, _Request] = {}
        self._jobs: dict[str, _Job] = {}
        self._order: queue.SimpleQueue[_Job] = queue.SimpleQueue()  # leader: arrival order
        self._lock = threading.Condition()  # guards _requests and _jobs
        self._executor: threading.Thread | None = None
        self._backoff = Backoff(_RELINK_FIRST_PAUSE_SECONDS, _RELINK_MAX_PAUSE_SECONDS)
        self.steps = StepStreams(4 * config.timeout, 4 * config.timeout)

    def attach(self, party: Party) -> None:
        """Start serving with ``party`` (its communicator must be connected)."""
        self.party = party
        self._executor = threading.Thread(
            target=self._serve, name=f"party{party.rank}-executor", daemon=True
        )
        self._executor.start()

    def add_to(self, server: grpc.Server) -> None:
        veil_pb2_grpc.add_InferenceServicer_to_server(self, server)

    def stop(self, reason: str = "the party is stopping") -> None:
        """Stop the executor and end every waiting call (the links are left to the caller)."""
        self.stopped.set()
        self._fail_waiting(grpc.StatusCode.UNAVAILABLE, reason)
        if self._executor is not None and self._executor is not threading.current_thread():
            self._executor.join(timeout=5)

    # -- RPCs ----------------------------------------------------------------------
    def Upload(self, request_iterator, context):
        caller = self.authz.caller(context)
        reassembler = Reassembler()
        names: list[str] = []
        arriving = 0  # bytes of the tensor being reassembled, charged to the caller
        try:
            for message in request_iterator:
                with self._lock:
                    self._request_for(context, caller, message.request_id)
                self.limits.charge(caller, len(message.chunk.data))
                arriving += len(message.chunk.data)
                tensor = reassembler.add(message.chunk)
                if tensor is None:
                    continue
                name = message.chunk.tag
                if is_part(name):
                    try:
                        check_part(name, tensor)
                    except ValueError as exc:
                        raise WireError(str(exc)) from None
                elif tensor.dtype != torch.int64 or tensor.dim() < 1 or tensor.shape[0] != 2:
                    raise WireError(f"share {name!r} must be an int64 pair of shape (2, ...)")
                with self._lock:
                    request = self._request_for(context, caller, message.request_id)
                    request.inputs[name] = (tensor, message.frac_bits)
                    request.charged += arriving
                    arriving = 0
                names.append(name)
        except WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed upload: {exc}")
        except UploadRefused as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self._name()}: {exc}")
        finally:
            self.limits.release(caller, arriving)
        if reassembler.in_progress:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "upload ended mid-tensor")
        return veil_pb2.UploadReply(names=names)

    def Run(self, request, context):
        caller = self.authz.caller(context)
        options = self.authz.stamp(context, caller, dict(request.options))
        self.authz.admit_program(context, caller, request.program, options)
        rank = self.party.rank if self.party is not None else "?"
        if self.party is None or self.stopped.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, f"party {rank} is not serving")
        if self.failed is not None:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"party {rank} is reconnecting to its peers after a failure "
                f"({type(self.failed).__name__}: {self.failed}); retry",
            )
        job = _Job(request.request_id, request.program, options, caller)
        with self._lock:  # whose request it is, before anything about it is looked at
            self.authz.claim(context, caller, job.request_id, self._holders(job.request_id))
        self._validate(job, context)
        with self._lock:
            self.authz.claim(context, caller, job.request_id, self._holders(job.request_id))
            if job.request_id in self._jobs:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "request id already queued")
            if len(self._jobs) >= self.queue_size:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"party {rank}: queue full ({len(self._jobs)} requests waiting); retry later",
                )
            self._jobs[job.request_id] = job
            self._lock.notify_all()
        if self.party.rank == LEADER:
            self._order.put(job)
        while not job.done.wait(_POLL_SECONDS):
            if not context.is_active():
                with self._lock:
                    if not job.started:  # the client gave up: do not run it
                        self._jobs.pop(job.request_id, None)
                        self._discard(job.request_id)
                return veil_pb2.RunReply()
        if job.code is not None:
            context.abort(job.code, job.message)
        return job.reply

    def _validate(self, job: _Job, context: grpc.ServicerContext) -> None:
        """Refuse a malformed request at its Run call (INVALID_ARGUMENT), dropping its uploads."""
        with self._lock:
            entry = self._requests.get(job.request_id)
            raw = dict(entry.inputs) if entry else {}
        try:
            inputs = _specs(_inputs(self.party.rank, raw))
        except ValueError as exc:
            why = str(exc)
        else:
            validate = self.validate
            why = None if validate is None else validate(job.program, job.options, inputs)
        if why is not None:
            with self._lock:
                if job.request_id not in self._jobs:
                    self._discard(job.request_id)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"party {self.party.rank}: {why}")

    def Fetch(self, request, context) -> Iterator[veil_pb2.TensorChunk]:
        caller = self.authz.caller(context)
        with self._lock:
            self.authz.claim(context, caller, request.request_id, self._holders(request.request_id))
            entry = self._requests.get(request.request_id)
            found = entry.outputs.pop(request.name, None) if entry else None
            if entry is not None and not entry.outputs and not entry.inputs:
                del self._requests[request.request_id]
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no output {request.name!r} for this request")
        yield from tensor_chunks(found[0], tag=request.name)

    def FetchSteps(self, request, context) -> Iterator[veil_pb2.TensorChunk]:
        caller = self.authz.caller(context)
        with self._lock:
            holders = self._holders(request.request_id)
            if not holders:  # a stream is only opened for a request its client uploaded
                context.abort(
                    grpc.StatusCode.NOT_FOUND, f"{self._name()}: no request {request.request_id!r}"
                )
            self.authz.claim(context, caller, request.request_id, holders)
        yield from self.steps.follow(request.request_id, request.name, context, self._name())

    # -- the executor ----------------------------------------------------------------
    def _serve(self) -> None:
        while not self.stopped.is_set():
            party = self.party
            assert party is not None
            try:
                request_id = self._next_request_id(party)
                if request_id is not None:
                    self._execute(party, request_id)
            except BaseException as exc:  # noqa: BLE001 - the links are now unusable
                if not self.recover or self.stopped.is_set():
                    self._fail(party, exc)
                    return
                self._relink(party, exc)

    def _relink(self, party: Party, exc: BaseException) -> None:
        """Fail what waits, rebuild the links and the PRG keys, retrying until peers answer.

        Every attempt, the first included, waits a backoff that grows until a request
        succeeds again, so a peer that keeps failing cannot make the parties spin.
        """
        self.failed = exc
        self.recoveries += 1
        reason = bounded(f"{type(exc).__name__}: {exc}")
        self._event(f"party {party.rank}: request failed ({reason}); relinking")
        self._fail_waiting(
            grpc.StatusCode.UNAVAILABLE,
            f"party {party.rank}: an earlier request failed ({reason}); "
            "the parties are reconnecting, retry",
        )
        comm = party.comm
        while not self.stopped.wait(self._backoff.next()):
            if getattr(comm, "closed", False):  # shut down by its owner: nothing to relink
                self.stop("the party's links were closed")
                return
            try:
                comm.relink(reason)
                self.party = Party(comm, fxp=party.fxp, device=party.device)
            except Exception as err:  # noqa: BLE001 - a peer not back yet, a stale link: retry
                reason = bounded(f"{type(err).__name__}: {err}")
                self._event(f"party {party.rank}: relinking failed ({reason}); retrying")
                continue
            self.failed = None
            self._event(f"party {party.rank}: links rebuilt; serving again")
            return

    def _event(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(line)

    def _next_request_id(self, party: Party) -> str | None:
        """The next request in the leader's order, or None to poll again."""
        comm = party.comm
        if comm.gone:
            peer, why = next(iter(comm.gone.items()))
            raise PeerError(peer, why)
        if party.rank == LEADER:
            try:
                job = self._order.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                return None
            with self._lock:
                if self._jobs.get(job.request_id) is not job:
                    return None  # cancelled by its client before it started
            announce = torch.frombuffer(bytearray(job.request_id.encode()), dtype=torch.uint8)
            with comm.scope("request"):
                for peer in (1, 2):
                    comm.send(peer, announce)
            return job.request_id
        announce = comm.poll(LEADER, _POLL_SECONDS)
        return None if announce is None else bytes(announce.numpy()).decode()

    def _execute(self, party: Party, request_id: str) -> None:
        comm = party.comm
        comm.reset_counters()
        wire_before = comm.wire_bytes_sent
        start = time.perf_counter()
        deadline = time.monotonic() + self.config.connect_timeout
        with self._lock:  # a follower may get the announcement before the client's Run
            while request_id not in self._jobs and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
            job = self._jobs.get(request_id)
            if job is not None:
                job.started = True
            request = self._requests.get(request_id)
        program = job.program if job else ""
        options = job.options if job else {}
        reason = self._not_ready(job, request)
        try:
            try:
                held = _inputs(party.rank, request.inputs if request else {})
            except ValueError as exc:  # parts uploaded after the Run call was validated
                held, reason = {}, reason or f"party {party.rank}: {exc}"
            shapes = sorted(
                f"{name}:{'seeded' if shape is None else shape}:{frac}"
                for name, (shape, frac) in _specs(held).items()
            )
            status = READY if reason is None else NO_RUN if job is None else NOT_READY
            wait = self.config.connect_timeout
            agree(comm, request_id, program, options, shapes, status, reason, wait)
            assert job is not None and request is not None
            inputs = {
                name: value
                if isinstance(value, Payload)
                else ArithShare(party, value[0].to(party.device), value[1])
                for name, value in held.items()
            }
            received = request.charged
            with self._lock:
                self._release_inputs(request)
            with comm.scope(program), self.steps.serving(request_id, options):
                results = self.programs[program](party, inputs, options)
            request.outputs = {
                name: (share.data.to("cpu"), share.frac_bits) for name, share in results.items()
            }
            traffic = comm.stats.total(program)
            reply = veil_pb2.RunReply(
                outputs=list(request.outputs),
                frac_bits={name: frac for name, (_, frac) in request.outputs.items()},
                cost=veil_pb2.PartyCost(
                    seconds=time.perf_counter() - start,
                    bytes_sent=traffic.bytes_sent,
                    send_steps=traffic.rounds,
                    depth=traffic.depth,
                ),
            )
            self._done(job, request_id, program, start, wire_before, received, reply=reply)
            self._backoff.reset()  # the links work again
        except RequestRefused as exc:
            with self._lock:
                self._discard(request_id)
            self._done(
                job,
                request_id,
                program,
                start,
                wire_before,
                code=grpc.StatusCode.FAILED_PRECONDITION,
                message=str(exc),
            )
        except BaseException as exc:
            message = f"party {party.rank} failed: {type(exc).__name__}: {exc}"
            with self._lock:
                self._discard(request_id)
            self._done(
                job,
                request_id,
                program,
                start,
                wire_before,
                code=grpc.StatusCode.INTERNAL,
                message=message,
            )
            raise

    def _not_ready(self, job: _Job | None, request: _Request | None) -> str | None:
        rank = self.party.rank if self.party else "?"
        if job is None:
            return f"party {rank} did not receive this request's Run call in time"
        if request is None:
            return f"party {rank} has no inputs for this request"
        if job.program not in self.programs:
            return f"party {rank} does not serve program {job.program!r}"
        if self.check is not None:
            why = self.check(job.program, job.options)
            if why is not None:
                return f"party {rank}: {why}"
        return None

    def _done(self, job, request_id, program, start, wire_before, received=0, **result) -> None:
        comm = self.party.comm
        entry = RequestLog(
            request_id,
            program,
            "reply" in result,
            time.perf_counter() - start,
            comm.stats.total(program) if program else Traffic(),
            comm.wire_bytes_sent - wire_before,
            received,
        )
        self.log = [*self.log[-99:], entry]
        self.steps.finish(request_id, None if "reply" in result else result.get("message"))
        if job is not None:
            with self._lock:
                self._jobs.pop(request_id, None)
            job.finish(**result)
        if self.on_request is not None:
            self.on_request(entry)

    def _fail(self, party: Party, exc: BaseException) -> None:
        self.failed = exc
        reason = f"{type(exc).__name__}: {exc}"
        party.comm.abort(reason, keep_server=True)
        self.stopped.set()
        self._fail_waiting(
            grpc.StatusCode.UNAVAILABLE,
            f"party {party.rank} stopped serving after a failure ({reason}); "
            "the parties must be restarted",
        )

    def _fail_waiting(self, code: grpc.StatusCode, message: str) -> None:
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        self.steps.fail_all(message)
        for job in jobs:
            job.finish(code=code, message=message)

    def _purge_stale(self) -> None:
        """Drop uploads whose Run never came (a client that died), so memory stays bounded."""
        horizon = time.monotonic() - 4 * self.config.timeout
        for request_id in [r for r, q in self._requests.items() if q.created < horizon]:
            if request_id not in self._jobs:
                self._discard(request_id)

    def _holders(self, request_id: str) -> list[str | None]:
        """The identities that created this request's uploads and Run call (lock held)."""
        entries = (self._requests.get(request_id), self._jobs.get(request_id))
        return [entry.owner for entry in entries if entry is not None]

    def _request_for(self, context, caller: str | None, request_id: str) -> _Request:
        """The request to upload into, created for ``caller`` if new (lock held)."""
        self._purge_stale()
        self.authz.claim(context, caller, request_id, self._holders(request_id))
        return self._requests.setdefault(request_id, _Request(caller))

    def _release_inputs(self, request: _Request) -> None:
        """Drop a request's inputs and their charge against the upload limits (lock held)."""
        self.limits.release(request.owner, request.charged)
        request.charged = 0
        request.inputs.clear()

    def _discard(self, request_id: str) -> None:
        """Forget a request, releasing what it held (lock held)."""
        request = self._requests.pop(request_id, None)
        if request is not None:
            self._release_inputs(request)

    def _name(self) -> str:
        return f"party {self.party.rank}" if self.party is not None else "this party"


def _inputs(
    rank: int, raw: dict[str, tuple[torch.Tensor, int]]
) -> dict[str, tuple[torch.Tensor, int] | Payload]:
    """Uploaded inputs by name: a pair with its fractional bits, or a seed-compressed
    payload gathered from its parts (ValueError if parts are missing or clash)."""
    payloads = gather(rank, {name: value for name, value in raw.items() if is_part(name)})
    pairs = {name: value for name, value in raw.items() if not is_part(name)}
    both = sorted(payloads.keys() & pairs.keys())
    if both:
        raise ValueError(f"inputs {both[:5]} arrived both as pairs and seed-compressed")
    return pairs | payloads


def _specs(
    held: dict[str, tuple[torch.Tensor, int] | Payload],
) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """What every party can tell of its inputs: the value's shape (None if seeded) and scale."""
    return {
        name: (None, value.frac_bits)
        if isinstance(value, Payload)
        else (tuple(value[0].shape[1:]), value[1])
        for name, value in held.items()
    }


def start_serving(
    config: ClusterConfig,
    rank: int,
    programs: dict[str, Program],
    device: torch.device | str = "cpu",
    **service_options,
) -> tuple[InferenceService, Party]:
    """Connect party ``rank`` to its peers and serve ``programs`` to clients (non-blocking).

    ``service_options`` go to :class:`InferenceService` (``check``, ``queue_size``,
    ``on_request``, ``model_owner``, ``session_owner``).
    """
    service = InferenceService(config, programs, **service_options)
    comm = connect_party(config, rank, device=device, add_services=service.add_to)
    try:
        party = _join(comm, FixedPoint(config.frac_bits), device)
    except BaseException as exc:
        comm.abort(bounded(f"{type(exc).__name__}: {exc}"))
        raise
    service.attach(party)
    return service, party


def _join(comm: GrpcCommunicator, fxp: FixedPoint, device: torch.device | str) -> Party:
    """Agree PRG keys with the peers, relinking while they are at a newer link generation.

    A restarted party starts at generation 0 while its peers have moved on: its first
    streams are refused as stale, and it relinks up to theirs, for ``connect_timeout``.
    """
    deadline = time.monotonic() + comm.config.connect_timeout
    backoff = Backoff(_RELINK_FIRST_PAUSE_SECONDS, _RELINK_MAX_PAUSE_SECONDS)
    while True:
        try:
            return Party(comm, fxp=fxp, device=device)
        except PeerError as exc:
            pause = backoff.next()
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            comm.relink(bounded(f"{type(exc).__name__}: {exc}"))
