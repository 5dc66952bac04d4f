"""Which party a client reached, found out before it sends anything.

Every party's certificate is valid for every party's host, so checking the host proves
nothing: a client whose address for party 0 leads to party 1 would hand party 1 two of
the three components of its input, enough to rebuild it.  A channel to party i therefore
asks TLS for party i's own name (:func:`veil.parties.tls.party_channel`), and a handshake
with any other party fails.  gRPC reports such a failure only as "unavailable", so
:func:`misdirected` probes the address with the other parties' names to say what went
wrong: another party answered, or a certificate from before party names existed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import grpc

from veil.parties import tls
from veil.parties.certs import party_tls_name
from veil.parties.config import ClusterConfig

_SETTLED = (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE)


def connects(channel: grpc.Channel, timeout: float) -> bool:
    """Whether ``channel`` completes a (TLS) handshake before it first fails or times out."""
    settled = threading.Event()
    state: list[grpc.ChannelConnectivity] = []

    def watch(now: grpc.ChannelConnectivity) -> None:
        if now in _SETTLED and not settled.is_set():
            state.append(now)
            settled.set()

    channel.subscribe(watch, try_to_connect=True)
    try:
        settled.wait(timeout)
    finally:
        channel.unsubscribe(watch)
    return state[:1] == [grpc.ChannelConnectivity.READY]


def misdirected(
    config: ClusterConfig,
    rank: int,
    channel: grpc.Channel,
    cert: Path | None,
    key: Path | None,
    timeout: float,
) -> str | None:
    """Why ``channel`` (to party ``rank``) must not be used, or None.

    None also when nothing answers at the address: the calls then fail as usual,
    naming the unreachable party.
    """
    if config.insecure or connects(channel, timeout):
        return None
    address = config.party(rank).address
    for other in config.parties:
        if other.rank != rank and _answers(config, address, cert, key, other.name, timeout):
            return (
                f"expected party {rank} at {address}, reached party {other.rank} "
                f"(its certificate is {other.name!r}'s); nothing was sent: "
                "check the party addresses in the cluster config"
            )
    if _answers(config, address, cert, key, None, timeout):
        expected = party_tls_name(config.party(rank).name)
        return (
            f"the server at {address} (party {rank}) has a certificate without the name "
            f"{expected!r} that proves it is party {rank} (made by an older `veil certs`?); "
            "nothing was sent: issue new certificates with `veil certs`"
        )
    return None


def _answers(
    config: ClusterConfig,
    address: str,
    cert: Path | None,
    key: Path | None,
    party_name: str | None,
    timeout: float,
) -> bool:
    """Whether the server at ``address`` holds ``party_name``'s certificate (None: any)."""
    name = party_tls_name(party_name) if party_name is not None else None
    channel = tls.open_channel(config, address, cert, key, server_name=name)
    try:
        return connects(channel, timeout)
    finally:
        channel.close()
