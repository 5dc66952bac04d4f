"""The gRPC communicator: one process per party, tensors streamed over (m)TLS.

Each party runs a gRPC server (the :class:`PartyLink` service) and keeps one
long-lived client stream open to each of its two peers.  A send chunks the
tensor (:mod:`veil.parties.wire`) onto the stream for that peer and returns; the
peer's server reassembles the chunks, validates them, and appends the tensor
to the FIFO queue for that source, where :meth:`GrpcCommunicator.recv` finds it.

Failures surface as :class:`PeerError` naming the peer, never as a hang:

- a malformed or out-of-sequence message, or a sender rank that does not match
  the authenticated certificate, poisons that peer's queue and aborts its stream;
- a peer that disconnects (crash, kill, clean close) poisons its queue too, after
  whatever it sent before, so a pending or later receive fails at once;
- a peer that stalls makes the receive fail after ``timeout`` seconds;
- :meth:`GrpcCommunicator.abort` tells the peers why this party gives up.

Links can be rebuilt in place (:meth:`GrpcCommunicator.relink`), so a serving party
survives a failed request with its state (the shared models) intact.  Every stream
belongs to a numbered *link generation*, sent in its opening hello; a relink moves a
party to a generation above its own and above any a peer has opened.  A party reads
only streams of its own generation: an older one is refused (a peer that restarted
learns that it must relink), a newer one waits aside and tells this party to relink up
to it.  Generations only grow and a party relinks only after a failure or to catch up,
so one incident ends in one new generation instead of parties relinking each other in
turn.  Reasons sent to peers are cut to :data:`MAX_REASON_CHARS`, so that a chain of
failures cannot grow the messages.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import torch

from veil.mpc.communicator import (
    WORLD_SIZE,
    Communicator,
    PeerError,
    PeerTimeoutError,
    tensor_nbytes,
)
from veil.parties import tls
from veil.parties.admission import DEFAULT_CLIENT_CALLS, Admission, server_threads
from veil.parties.config import ClusterConfig, ConfigError
from veil.parties.wire import (
    SMALL_CHUNK_BYTES,
    Reassembler,
    WireError,
    decode_chunk,
    encoded_chunks,
    small_chunk,
)
from veil.proto import veil_pb2, veil_pb2_grpc

if TYPE_CHECKING:
    from typing_extensions import Self

ABORT_DTYPE = "abort"  # a control chunk: the sender gives up, ``tag`` says why
HELLO_DTYPE = "hello"  # a control chunk opening every stream; ``seq`` is its link generation
MAX_REASON_CHARS = 300

AddServices = Callable[[grpc.Server], None]


@dataclass(frozen=True)
class _PeerGone:
    """Queued after a peer's last message when its stream ends or turns bad."""

    reason: str


def bounded(reason: str) -> str:
    """``reason`` cut to :data:`MAX_REASON_CHARS` (it may quote a peer's reason, and so on)."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return reason[: MAX_REASON_CHARS - 3] + "..."


class _Inbox:
    """The messages of one incoming stream, in order, and the sequence number expected next."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.expected_seq = 0
        self.gone_reason: str | None = None


def _loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


class GrpcCommunicator(Communicator):
    """Communicator for party ``rank`` of the cluster described by ``config``.

    Construction starts the server (on ``config``'s port for this rank; port 0
    picks a free one, see :attr:`port`); :meth:`connect` then opens the streams to
    the peers.  :func:`connect_party` does both.  Calls to ``add_services`` pass
    :class:`~veil.parties.admission.Admission`: at most ``client_calls`` at a time.
    """

    def __init__(
        self,
        rank: int,
        config: ClusterConfig,
        *,
        device: torch.device | str = "cpu",
        timeout: float | None = None,
        add_services: AddServices | None = None,
        client_calls: int = DEFAULT_CLIENT_CALLS,
    ):
        super().__init__(rank, config.timeout if timeout is None else timeout)
        self.config = config
        self.device = torch.device(device)
        spec = config.party(rank)
        self._peers = [r for r in range(WORLD_SIZE) if r != rank]
        self._inbox: dict[int, _Inbox | None] = dict.fromkeys(self._peers)  # active streams
        self._pending: dict[int, _Inbox] = {}  # newer streams, activated at the next relink
        self.generation = 0  # the link generation this party sends and receives on
        self._send_seq = dict.fromkeys(self._peers, 0)
        self._outgoing: dict[int, _OutgoingStream] = {}
        self.gone: dict[int, str] = {}  # peers whose link ended, and why (for idle servers)
        self.wire_bytes_sent = 0  # serialized TensorChunk bytes (payload + protobuf framing)
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()
        self._activated = threading.Condition(self._lock)
        self._bound: ClusterConfig | None = None
        self._closed = False
        self._server_stopped = False

        admission = Admission(rank, client_calls)
        self._server = grpc.server(
            ThreadPoolExecutor(
                max_workers=server_threads(admission), thread_name_prefix=f"party{rank}-rpc"
            ),
            interceptors=[admission],
            options=tls.SERVER_OPTIONS,
        )
        self._server.add_generic_rpc_handlers((_link_handler(_LinkServicer(self)),))
        if add_services is not None:
            add_services(self._server)
        bind_host = spec.host if _loopback(spec.host) else "::"
        bind = f"[{bind_host}]:{spec.port}" if ":" in bind_host else f"{bind_host}:{spec.port}"
        try:
            if config.insecure:
                self.port = self._server.add_insecure_port(bind)
            else:
                self.port = self._server.add_secure_port(bind, tls.server_credentials(config, rank))
        except RuntimeError as exc:
            raise ConfigError(f"party {rank} cannot listen on {bind}: {exc}") from None
        if self.port == 0:
            raise ConfigError(f"party {rank} cannot listen on {bind} (port in use?)")
        self._server.start()

    # -- connection management ---------------------------------------------------
    def connect(self, config: ClusterConfig | None = None) -> None:
        """Open the streams to both peers; fail naming the first one unreachable in time.

        ``config`` may update the peers' addresses (when they listened on port 0).
        """
        config = config or self._bound or self.config
        self._bound = config
        own = config.party(self.rank)
        deadline = time.monotonic() + config.connect_timeout
        for dst in self._peers:
            address = config.party(dst).address
            channel = tls.party_channel(config, dst, own.cert, own.key)
            self._channels.append(channel)
            try:
                grpc.channel_ready_future(channel).result(
                    timeout=max(0.0, deadline - time.monotonic())
                )
            except grpc.FutureTimeoutError:
                raise PeerTimeoutError(
                    dst,
                    f"unreachable at {address} after {config.connect_timeout:g} s (not running, "
                    "its certificate not from this cluster's CA, or another party's?)",
                ) from None
            stream = _OutgoingStream(channel, dst, self._count_wire)
            # Register the stream at the peer now, so that its place in the link
            # generations is fixed before any data or abort travels on it.
            hello = veil_pb2.TensorChunk(sender=self.rank, dtype=HELLO_DTYPE, seq=self.generation)
            stream.put_control(hello)
            self._outgoing[dst] = stream

    @property
    def closed(self) -> bool:
        """Closed or aborted for good (a relink is impossible)."""
        return self._closed

    def relink(self, reason: str) -> None:
        """Abandon the current links (telling the peers why) and open the next generation.

        The new generation is above this party's and above any a peer has opened; the
        peers notice and relink to it too; messages still arriving on the old streams
        are dropped.  Raises :class:`PeerError` (naming the peer) if a peer is
        unreachable within ``connect_timeout``; calling again retries.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError(f"party {self.rank}'s communicator is closed")
            old_streams, self._outgoing = list(self._outgoing.values()), {}
            old_channels, self._channels = self._channels, []
            self.gone = {}
            pending, self._pending = self._pending, {}
            self.generation = max(
                [self.generation + 1, *(inbox.generation for inbox in pending.values())]
            )
            for src in self._peers:
                inbox = pending.get(src)
                usable = inbox is not None and inbox.generation == self.generation
                # A newer stream that already ended is no link: wait for the peer's next.
                alive = usable and inbox.gone_reason is None
                self._activate(src, inbox if alive else None)
            self._send_seq = dict.fromkeys(self._peers, 0)
        for stream in old_streams:
            stream.finish(abort_reason=bounded(f"relinking: {reason}"), sender=self.rank)
        for stream in old_streams:
            stream.wait(timeout=1.0)
            stream.cancel()
        for channel in old_channels:
            channel.close()
        self.connect()

    def _activate(self, src: int, inbox: _Inbox | None) -> None:
        """Make ``inbox`` the stream ``recv`` reads from ``src`` (lock held)."""
        self._inbox[src] = inbox
        if inbox is not None and inbox.gone_reason is not None:
            self.gone.setdefault(src, inbox.gone_reason)
        self._activated.notify_all()

    def _register(self, src: int, generation: int) -> _Inbox | None:
        """A new stream from ``src``: active if it is of this party's generation and none
        is; set aside (and this party told to relink) if newer; None if older (stale)."""
        inbox = _Inbox(generation)
        with self._lock:
            if generation < self.generation:
                return None
            if generation == self.generation and self._inbox[src] is None:
                self._activate(src, inbox)
                return inbox
            kept = self._pending.get(src)
            if kept is None or kept.generation <= generation:
                self._pending[src] = inbox
            if generation > self.generation:
                self.gone.setdefault(
                    src, f"opened link generation {generation} (this party is at {self.generation})"
                )
                self._activated.notify_all()  # a receive waiting for this peer fails now
        return inbox

    def close(self) -> None:
        """Finish sending what is queued, end the streams, stop the server."""
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            for stream in self._outgoing.values():
                stream.finish()
            for stream in self._outgoing.values():
                stream.wait(timeout=self.timeout)
        self._shutdown()

    def abort(self, reason: str, *, keep_server: bool = False) -> None:
        """Give up: tell the peers why (best effort) and drop the links.

        ``keep_server`` leaves this party's server up so that other services on it
        (the client API) can still answer the call that triggered the abort; a later
        :meth:`close` stops it.
        """
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            for stream in self._outgoing.values():
                stream.finish(abort_reason=reason, sender=self.rank)
            for stream in self._outgoing.values():
                stream.wait(timeout=1.0)
                stream.cancel()
        if not keep_server:
            self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            if self._server_stopped:
                return
            self._server_stopped = True
        self._server.stop(grace=0.5).wait()
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(f"{type(exc).__name__}: {exc}")

    # -- transport -----------------------------------------------------------------
    def _send(self, dst: int, tensor: torch.Tensor, clock: int) -> None:
        if self._closed:
            raise RuntimeError(f"party {self.rank}'s communicator is closed")
        stream = self._outgoing.get(dst)
        if stream is None:
            raise PeerError(dst, "not connected (call connect() first)")
        stream.raise_if_failed()
        seq = self._send_seq[dst]
        self._send_seq[dst] = seq + 1
        scope = "/".join(self._stack())
        # Copy off the device here, in the caller's thread and CUDA stream; a large tensor
        # is chunked in gRPC's sender thread so the caller can go on computing.
        stream.put(tensor.detach().to("cpu"), sender=self.rank, seq=seq, tag=scope, clock=clock)

    def _recv(self, src: int, timeout: float) -> tuple[torch.Tensor, int]:
        deadline = time.monotonic() + timeout
        with self._lock:  # after a relink, wait for the peer's new stream
            while (inbox := self._inbox[src]) is None:
                if src in self.gone:  # the peer moved to a newer generation: relink first
                    raise PeerError(src, self.gone[src])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerTimeoutError(src, f"no message within {timeout:g} s")
                self._activated.wait(remaining)
        try:
            item = inbox.queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise PeerTimeoutError(src, f"no message within {timeout:g} s") from None
        if isinstance(item, _PeerGone):
            inbox.queue.put(item)  # every later receive from this peer fails the same way
            raise PeerError(src, item.reason)
        tensor, clock = item
        return (tensor if self.device.type == "cpu" else tensor.to(self.device)), clock

    def poll(self, src: int, timeout: float) -> torch.Tensor | None:
        """The next tensor from ``src`` if one arrives within ``timeout``, else None.

        For idle waits (a serving party waiting for its next request): a timeout here
        is not an error, but a peer that is gone still raises :class:`PeerError`.
        Not counted in :attr:`stats`.
        """
        try:
            tensor, clock = self._recv(src, timeout)
        except PeerTimeoutError:
            return None
        self.observe_clock(clock)
        return tensor

    def _count_wire(self, nbytes: int) -> None:
        self.wire_bytes_sent += nbytes

    # -- called by the server ------------------------------------------------------
    def _deliver(
        self, src: int, inbox: _Inbox, item: tuple[torch.Tensor, int] | _PeerGone
    ) -> None:
        if isinstance(item, _PeerGone):
            with self._lock:
                inbox.gone_reason = inbox.gone_reason or item.reason
                if self._inbox[src] is inbox:  # an abandoned stream's end is no news
                    self.gone.setdefault(src, item.reason)
        inbox.queue.put(item)


class _OutgoingStream:
    """The client stream to one peer, fed from a queue by gRPC's sender thread."""

    def __init__(self, channel: grpc.Channel, dst: int, count: Callable[[int], None]):
        self.dst = dst
        self._count = count
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Requests are serialized TensorChunks already (see ``_requests``).
        stream = channel.stream_unary(
            LINK_METHOD, response_deserializer=veil_pb2.StreamSummary.FromString
        )
        self._call = stream.future(self._requests(), wait_for_ready=True)

    def put(self, tensor: torch.Tensor, *, sender: int, seq: int, tag: str, clock: int) -> None:
        """Queue ``tensor``; a small one is serialized here, in the caller's thread, because
        it takes microseconds there and leaves gRPC's sender thread only a hand-off on the
        round trip's critical path."""
        if tensor_nbytes(tensor) < SMALL_CHUNK_BYTES:
            self._queue.put(small_chunk(tensor, sender=sender, seq=seq, tag=tag, clock=clock))
        else:
            self._queue.put((tensor, sender, seq, tag, clock))

    def put_control(self, chunk: veil_pb2.TensorChunk) -> None:
        self._queue.put(chunk)

    def finish(self, abort_reason: str | None = None, sender: int = 0) -> None:
        if abort_reason is not None:
            self._queue.put(
                veil_pb2.TensorChunk(sender=sender, dtype=ABORT_DTYPE, tag=bounded(abort_reason))
            )
        self._queue.put(None)

    def wait(self, timeout: float) -> None:
        try:
            self._call.result(timeout=timeout)
        except (grpc.RpcError, grpc.FutureTimeoutError, grpc.FutureCancelledError):
            pass  # the peer is gone or slow; close/abort must not fail because of it

    def cancel(self) -> None:
        self._call.cancel()

    def raise_if_failed(self) -> None:
        if self._call.done():
            try:
                self._call.result(timeout=0)
            except grpc.RpcError as exc:
                raise PeerError(
                    self.dst, f"link closed: {exc.code().name}: {exc.details()}"
                ) from None
            except grpc.FutureCancelledError:
                raise PeerError(self.dst, "link was cancelled") from None
            raise PeerError(self.dst, "link already closed")

    def _requests(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, veil_pb2.TensorChunk):
                yield item.SerializeToString()
                continue
            if isinstance(item, bytes):
                self._count(len(item))
                yield item
                continue
            tensor, sender, seq, tag, clock = item
            for chunk in encoded_chunks(tensor, sender=sender, seq=seq, tag=tag, clock=clock):
                self._count(len(chunk))
                yield chunk


LINK_METHOD = "/veil.PartyLink/Stream"


def _link_handler(servicer: _LinkServicer) -> grpc.GenericRpcHandler:
    """PartyLink.Stream with chunks parsed by :func:`~veil.parties.wire.decode_chunk`, which
    leaves the data in the received bytes (the generated code would copy it twice)."""
    handler = grpc.stream_unary_rpc_method_handler(
        servicer.Stream,
        request_deserializer=decode_chunk,
        response_serializer=veil_pb2.StreamSummary.SerializeToString,
    )
    return grpc.method_handlers_generic_handler("veil.PartyLink", {"Stream": handler})


class _LinkServicer(veil_pb2_grpc.PartyLinkServicer):
    """Receives one peer's stream: authenticate, reassemble, validate, enqueue."""

    def __init__(self, comm: GrpcCommunicator):
        self.comm = comm

    def Stream(self, request_iterator, context):
        comm = self.comm
        src = self._authenticated_rank(context)
        inbox: _Inbox | None = None
        reassembler = Reassembler()
        delivered = 0
        error: str | None = None
        try:
            for chunk in request_iterator:
                if src is None:  # plaintext: the first chunk names its sender, unverifiable
                    if chunk.sender not in comm._peers:
                        context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT, f"bad sender {chunk.sender}"
                        )
                    src = chunk.sender
                if chunk.sender != src:
                    error = f"sent a chunk claiming to be from party {chunk.sender}"
                    break
                if inbox is None:
                    # A stream opened without a hello belongs to the current generation.
                    generation = chunk.seq if chunk.dtype == HELLO_DTYPE else comm.generation
                    inbox = comm._register(src, generation)
                    if inbox is None:
                        context.abort(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"party {comm.rank} is at link generation {comm.generation}; "
                            f"a stream of generation {generation} is stale, relink",
                        )
                if chunk.dtype == HELLO_DTYPE:
                    continue
                if chunk.dtype == ABORT_DTYPE:
                    comm._deliver(src, inbox, _PeerGone(f"aborted: {bounded(chunk.tag)}"))
                    return veil_pb2.StreamSummary(messages=delivered)
                if not reassembler.in_progress and chunk.seq != inbox.expected_seq:
                    error = f"message {chunk.seq} out of sequence, expected {inbox.expected_seq}"
                    break
                try:
                    tensor = reassembler.add(chunk)
                except WireError as exc:
                    error = f"malformed message {chunk.seq}: {exc}"
                    break
                if tensor is not None:
                    inbox.expected_seq += 1
                    comm._deliver(src, inbox, (tensor, chunk.clock))
                    delivered += 1
        except grpc.RpcError:
            # The request iterator raises when the peer's side of the stream breaks.
            if src is not None and inbox is not None:
                comm._deliver(src, inbox, _PeerGone("connection lost"))
            return veil_pb2.StreamSummary(messages=delivered)
        if src is None:
            return veil_pb2.StreamSummary(messages=0)
        if inbox is None:
            inbox = comm._register(src, comm.generation)
        if inbox is None:
            return veil_pb2.StreamSummary(messages=0)
        if error is not None:
            comm._deliver(src, inbox, _PeerGone(error))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"party {comm.rank} rejects: {error}")
        reason = "closed its link mid-message" if reassembler.in_progress else "closed its link"
        comm._deliver(src, inbox, _PeerGone(reason))
        return veil_pb2.StreamSummary(messages=delivered)

    def _authenticated_rank(self, context: grpc.ServicerContext) -> int | None:
        comm = self.comm
        if comm.config.insecure:
            return None
        name = tls.caller_name(context)
        rank = comm.config.rank_of(name) if name is not None else None
        if rank is None or rank == comm.rank:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"party {comm.rank}: certificate {name!r} is not a peer in this cluster",
            )
        return rank


def connect_party(
    config: ClusterConfig,
    rank: int,
    *,
    device: torch.device | str = "cpu",
    add_services: AddServices | None = None,
) -> GrpcCommunicator:
    """Start party ``rank``'s server and connect to its peers (the usual entry point)."""
    comm = GrpcCommunicator(rank, config, device=device, add_services=add_services)
    try:
        comm.connect()
    except BaseException:
        comm.abort("could not connect to the cluster")
        raise
    return comm
