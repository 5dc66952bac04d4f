"""The gRPC communicator over real mTLS links: round trips, counters, validation, timeouts."""

from __future__ import annotations

import time

import grpc
import pytest
import torch

from veil import mpc
from veil.mpc.communicator import PeerError, PeerTimeoutError
from veil.parties.config import ClusterConfig
from veil.parties.grpc_comm import GrpcCommunicator
from veil.parties.local import local_config
from veil.parties.wire import tensor_chunks
from veil.proto import veil_pb2, veil_pb2_grpc

PAYLOADS = [
    torch.arange(12, dtype=torch.int64).reshape(3, 4),
    torch.zeros(0, dtype=torch.int64),
    torch.zeros(2, 0, 5, dtype=torch.float32),
    torch.tensor(-5, dtype=torch.int64),
    torch.tensor([True, False]),
    torch.tensor([1, 2, 250], dtype=torch.uint8),
    torch.tensor([-3, 4], dtype=torch.int8),
    torch.tensor([-3, 4], dtype=torch.int16),
    torch.tensor([-3, 4], dtype=torch.int32),
    torch.tensor([0.5, -1.5], dtype=torch.float16),
    torch.tensor([0.5, -1.5], dtype=torch.bfloat16),
    torch.tensor([0.5, -1.5], dtype=torch.float64),
    torch.tensor([1 + 2j], dtype=torch.complex64),
    torch.randint(-(2**63), 2**63 - 1, (128, 3072), dtype=torch.int64),  # 3 MiB
    torch.randint(-(2**63), 2**63 - 1, (5, 1 << 18), dtype=torch.int64),  # 10 MiB > 4 MB limit
]


def ring_of_sends(party, payloads):
    """Every party sends every payload to both neighbours and returns what it received."""
    comm = party.comm
    received = []
    for tensor in payloads:
        comm.send(comm.next_rank, tensor)
        comm.send(comm.prev_rank, tensor.t() if tensor.dim() == 2 else tensor)
        received.append((comm.recv(comm.prev_rank), comm.recv(comm.next_rank)))
    return received


def test_round_trips_over_mtls(grpc_run) -> None:
    for received in grpc_run(ring_of_sends, PAYLOADS):
        for tensor, (from_prev, from_next) in zip(PAYLOADS, received, strict=True):
            expected_next = tensor.t() if tensor.dim() == 2 else tensor
            for got, want in ((from_prev, tensor), (from_next, expected_next)):
                assert got.dtype == want.dtype and got.shape == want.shape
                assert torch.equal(got, want)


def traffic(party, payloads):
    ring_of_sends(party, payloads)
    with party.comm.scope("proto"):
        party.comm.send_prev_recv_next(torch.ones(7, dtype=torch.int64))
    # Wall time differs between transports by nature; everything else must not.
    return {
        path: (t.bytes_sent, t.bytes_received, t.messages_sent, t.rounds, t.calls)
        for path, t in party.comm.stats.by_scope.items()
    }


def test_counters_equal_in_memory(grpc_run) -> None:
    payloads = PAYLOADS[:6]
    assert grpc_run(traffic, payloads) == mpc.simulate(traffic, payloads)


def test_cluster_reused_across_calls(grpc_threads) -> None:
    first = grpc_threads.comms
    grpc_threads.run(lambda p: p.rank)
    assert grpc_threads.comms is first is not None


def test_failing_party_fails_peers_fast_and_cluster_recovers(grpc_threads) -> None:
    def fn(party):
        if party.rank == 1:
            raise ZeroDivisionError("party 1 is broken")
        return party.comm.recv(1)

    start = time.monotonic()
    outcomes = grpc_threads.run_all(fn)
    assert time.monotonic() - start < 5
    assert isinstance(outcomes[1].error, ZeroDivisionError)
    for rank in (0, 2):
        assert isinstance(outcomes[rank].error, PeerError) and outcomes[rank].error.peer == 1
        assert "ZeroDivisionError" in str(outcomes[rank].error)
    with pytest.raises(ZeroDivisionError):
        grpc_threads.run(fn)
    assert grpc_threads.run(lambda p: p.rank * 2) == [0, 2, 4]


def overwrite_after_send(party, big_numel):
    """Party 0 sends a large tensor, then a small one that it overwrites at once."""
    comm = party.comm
    if party.rank == 0:
        comm.send(1, torch.zeros(big_numel, dtype=torch.int64))
        small = torch.arange(4)
        comm.send(1, small)
        small.fill_(-1)
    elif party.rank == 1:
        comm.recv(0)
        return comm.recv(0)
    return None


def test_small_tensor_is_serialized_in_send(grpc_threads) -> None:
    """gRPC's sender thread is still busy with 32 MB when party 0 overwrites the small
    tensor: it arrives intact only if send() serialized it in the caller's thread."""
    assert torch.equal(grpc_threads.run(overwrite_after_send, 4 << 20)[1], torch.arange(4))


# -- a single party under attack ------------------------------------------------------


@pytest.fixture
def config(tmp_path) -> ClusterConfig:
    return local_config(tmp_path, timeout=1.0, connect_timeout=1.0)


@pytest.fixture
def party0(config):
    comm = GrpcCommunicator(0, config)
    yield comm
    comm.abort("test over")


def channel_as(config: ClusterConfig, port: int, name: str, ca_dir=None) -> grpc.Channel:
    """A client channel presenting certificate ``name`` (from ``ca_dir``, default the cluster's)."""
    directory = ca_dir or config.ca.parent
    creds = grpc.ssl_channel_credentials(
        root_certificates=config.ca.read_bytes(),
        private_key=(directory / f"{name}.key").read_bytes(),
        certificate_chain=(directory / f"{name}.pem").read_bytes(),
    )
    return grpc.secure_channel(f"localhost:{port}", creds)


def stream(channel: grpc.Channel, chunks, timeout: float = 5.0) -> veil_pb2.StreamSummary:
    return veil_pb2_grpc.PartyLinkStub(channel).Stream(iter(chunks), timeout=timeout)


def test_timeout_names_the_peer(party0) -> None:
    start = time.monotonic()
    with pytest.raises(PeerTimeoutError) as info:
        party0.recv(2)
    assert info.value.peer == 2 and "party 2" in str(info.value)
    assert 0.9 < time.monotonic() - start < 3


def test_authenticated_peer_delivers(config, party0) -> None:
    chunks = list(tensor_chunks(torch.arange(5), sender=2, seq=0))
    with channel_as(config, party0.port, "party2") as channel:
        assert stream(channel, chunks).messages == 1
    assert torch.equal(party0.recv(2), torch.arange(5))
    with pytest.raises(PeerError, match="party 2: closed its link"):
        party0.recv(2)


@pytest.mark.parametrize(
    "make_chunks, reason",
    [
        (lambda: tensor_chunks(torch.arange(5), sender=1, seq=0), "claiming to be from party 1"),
        (lambda: tensor_chunks(torch.arange(5), sender=2, seq=3), "out of sequence"),
        (
            lambda: [veil_pb2.TensorChunk(sender=2, dtype="int99", shape=[1], chunk_count=1)],
            "dtype",
        ),
        (
            lambda: [
                veil_pb2.TensorChunk(sender=2, dtype="int64", shape=[3], chunk_count=1, data=b"x")
            ],
            "bytes",
        ),
    ],
    ids=["sender-mismatch", "sequence", "dtype", "size"],
)
def test_malformed_messages_rejected(config, party0, make_chunks, reason) -> None:
    with channel_as(config, party0.port, "party2") as channel, pytest.raises(grpc.RpcError) as rpc:
        stream(channel, list(make_chunks()))
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(PeerError, match=reason) as info:
        party0.recv(2)
    assert info.value.peer == 2


def test_certificate_from_another_ca_refused(config, party0, tmp_path) -> None:
    other = tmp_path / "other"
    local_config(other)  # a second cluster: same names, different CA
    chunks = list(tensor_chunks(torch.arange(5), sender=2))
    with (
        channel_as(config, party0.port, "party2", ca_dir=other) as channel,
        pytest.raises(grpc.RpcError) as rpc,
    ):
        stream(channel, chunks, timeout=3)
    assert rpc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    with pytest.raises(PeerTimeoutError):
        party0.recv(2)  # nothing was delivered


def test_name_not_in_cluster_refused(config, party0) -> None:
    """Signed by the cluster CA but not a party (the client certificate): refused."""
    with channel_as(config, party0.port, "client") as channel, pytest.raises(grpc.RpcError) as rpc:
        stream(channel, list(tensor_chunks(torch.arange(5), sender=2)))
    assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_party_cannot_impersonate_itself(config, party0) -> None:
    with channel_as(config, party0.port, "party0") as channel, pytest.raises(grpc.RpcError) as rpc:
        stream(channel, list(tensor_chunks(torch.arange(5), sender=0)))
    assert rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_plaintext_connection_to_tls_party_refused(party0) -> None:
    with (
        grpc.insecure_channel(f"localhost:{party0.port}") as channel,
        pytest.raises(grpc.RpcError) as rpc,
    ):
        stream(channel, list(tensor_chunks(torch.arange(5), sender=2)), timeout=3)
    assert rpc.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_connect_to_missing_peer_names_it(config, party0) -> None:
    start = time.monotonic()
    with pytest.raises(PeerTimeoutError) as info:
        party0.connect(config.with_addresses(["localhost:1", "localhost:1", "localhost:1"]))
    assert info.value.peer == 1 and "unreachable" in str(info.value)
    assert time.monotonic() - start < 3


def test_received_tensors_move_to_communicator_device(config, party0) -> None:
    party0.device = torch.device("meta")  # any non-CPU device exercises the move
    with channel_as(config, party0.port, "party2") as channel:
        stream(channel, list(tensor_chunks(torch.arange(3), sender=2)))
    assert party0.recv(2).device.type == "meta"


def test_send_after_close_refused(party0) -> None:
    party0.close()
    with pytest.raises(RuntimeError, match="closed"):
        party0.send(1, torch.ones(1))
