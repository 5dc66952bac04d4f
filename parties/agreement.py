"""All three parties hold the same request before any of them computes it.

Before running a request each party sends both peers a digest of what it holds
(request id, program, options, input shapes) and a status byte: ready, no Run call
(the client's call never reached it within ``wait`` seconds), or not ready for a reason
of its own (no inputs, unknown program, model missing).  Every party then decides the
same way: run, or refuse the request naming the party at fault, with nothing run and
the links still in step for the next request -- a Run that reached only some parties
fails for its client alone, and no relink disturbs the others.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch

from veil.mpc.communicator import PeerTimeoutError

if TYPE_CHECKING:
    from veil.parties.grpc_comm import GrpcCommunicator

READY, NO_RUN, NOT_READY = 0, 1, 2
_DIGEST_BYTES = 16


class RequestRefused(RuntimeError):
    """The parties did not agree to run a request (nothing ran, links still in step)."""


def agree(
    comm: GrpcCommunicator,
    request_id: str,
    program: str,
    options: dict[str, str],
    shapes: list[str],
    status: int,
    reason: str | None,
    wait: float,
) -> None:
    """Exchange (digest, status) with both peers; raise :class:`RequestRefused` unless all agree.

    ``wait`` is how long a peer may spend waiting for its own Run call before it answers;
    ``reason`` is this party's own explanation when its status is not READY.
    """
    text = "\0".join(
        [request_id, program, *(f"{k}={v}" for k, v in sorted(options.items())), *shapes]
    )
    digest = hashlib.sha256(text.encode()).digest()[:_DIGEST_BYTES] + bytes([status])
    mine = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
    peers = (comm.prev_rank, comm.next_rank)
    with comm.scope("request"):
        comm.send(comm.next_rank, mine)
        comm.send(comm.prev_rank, mine)
        theirs = {peer: _receive(comm, peer, wait + comm.timeout) for peer in peers}
    statuses = {comm.rank: status} | {peer: int(t[-1]) for peer, t in theirs.items()}
    missing = sorted(rank for rank, s in statuses.items() if s == NO_RUN)
    if missing:
        raise RequestRefused(
            f"party {missing[0]} did not receive the Run call of request {request_id!r} "
            f"within {wait:g} s; nothing ran at any party"
        )
    unready = sorted(rank for rank, s in statuses.items() if s != READY)
    if unready:
        raise RequestRefused(
            reason or f"party {unready[0]} cannot run request {request_id!r} ({program!r})"
        )
    if not all(torch.equal(mine[:-1], t[:-1].cpu()) for t in theirs.values()):
        raise RequestRefused(
            "the parties received different requests (program, options or input shapes); "
            "nothing ran"
        )


def _receive(comm: GrpcCommunicator, peer: int, timeout: float) -> torch.Tensor:
    tensor = comm.poll(peer, timeout)
    if tensor is None:
        raise PeerTimeoutError(peer, f"no answer to the request agreement within {timeout:g} s")
    return tensor
