"""gRPC credentials from a cluster config, and who is on the other end of a call.

Mutual TLS is the default: servers demand a client certificate signed by the
cluster CA, and clients check the server's certificate against the same CA.  The
common name of the caller's certificate then tells a party *which* peer or client
it is talking to (see :func:`caller_name`).  In the other direction, a channel to party
i asks TLS for party i's own name (:func:`veil.parties.certs.party_tls_name`) instead of
the host, so it cannot reach another party by mistake (:func:`party_channel`).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from veil.parties.certs import has_dns_name, party_tls_name
from veil.parties.config import ClusterConfig, ConfigError


def read_pem(path: Path | None, what: str) -> bytes:
    if path is None:
        raise ConfigError(f"{what} is not configured (set insecure = true for plaintext tests)")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(config: ClusterConfig, rank: int) -> grpc.ServerCredentials:
    spec = config.party(rank)
    cert = read_pem(spec.cert, f"party {rank} cert")
    if not has_dns_name(cert, party_tls_name(spec.name)):
        raise ConfigError(
            f"party {rank}'s certificate {spec.cert} lacks the name {party_tls_name(spec.name)!r} "
            "that lets clients and peers check they reached party "
            f"{rank} (made by an older `veil certs`?); issue new certificates with `veil certs`"
        )
    return grpc.ssl_server_credentials(
        [(read_pem(spec.key, f"party {rank} key"), cert)],
        root_certificates=read_pem(config.ca, "cluster CA"),
        require_client_auth=True,
    )


def channel_credentials(
    config: ClusterConfig, cert: Path | None, key: Path | None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(config.ca, "cluster CA"),
        private_key=read_pem(key, "private key"),
        certificate_chain=read_pem(cert, "certificate"),
    )


def open_channel(
    config: ClusterConfig,
    address: str,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    server_name: str | None = None,
) -> grpc.Channel:
    """A channel to ``address``: mTLS with (cert, key), or plaintext if the cluster is insecure.

    ``server_name``: the name the server's certificate must carry (default: the host).
    """
    options = [
        # Peers start in any order: retry a refused connection quickly, not after gRPC's
        # default 1 s, 1.6 s, 2.6 s ... backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1_000),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if config.insecure:
        return grpc.insecure_channel(address, options=options)
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, channel_credentials(config, cert, key), options=options)


def party_channel(
    config: ClusterConfig, rank: int, cert: Path | None = None, key: Path | None = None
) -> grpc.Channel:
    """A channel to party ``rank`` that only party ``rank``'s certificate can answer."""
    spec = config.party(rank)
    return open_channel(config, spec.address, cert, key, server_name=party_tls_name(spec.name))


SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]


def caller_name(context: grpc.ServicerContext) -> str | None:
    """Common name of the caller's verified certificate (None on a plaintext channel)."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None
