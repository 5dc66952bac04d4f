"""The serving layer against hostile clients: model ownership, request ownership, the
party a client reached, and uploads that promise more than they send.

Three serving parties run as threads of this process with mutual TLS on loopback;
``mallory`` is an ordinary client and ``owner2`` an owner that does not own ``bert``.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import replace
from functools import partial

import grpc
import pytest
import torch

from veil.parties.certs import write_cluster_certs
from veil.parties.client import InferenceClient, InferenceError, VeilClient
from veil.parties.config import ConfigError, config_from_dict
from veil.parties.grpc_comm import GrpcCommunicator
from veil.parties.models import ModelStore, check_request, model_programs
from veil.parties.service import InferenceService
from veil.parties.testing import serve_in_threads
from veil.parties.upload_limits import UploadLimits, UploadRefused
from veil.proto import veil_pb2

from .test_models import tiny_bert
from .test_service import square_plus

PER_CLIENT_LIMIT = 8 << 20
PER_PARTY_LIMIT = 12 << 20
CLAIMED_BYTES = 1 << 30  # what the hostile header announces
RSS_GROWTH_BOUND = 256 << 20  # far below the claim; the stream sends 1 MiB


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(bound config, services, model stores) of three serving parties."""
    directory = tmp_path_factory.mktemp("security")
    write_cluster_certs(
        directory, client_names=("client", "mallory"), owner_names=("owner", "owner2")
    )
    raw = {
        "ca": "ca.pem",
        "timeout": 10.0,
        "clients": ["client", "mallory"],
        "owners": ["owner", "owner2"],
        "models": {"special": {"owners": ["owner2"]}},
        "upload_limit_per_client": PER_CLIENT_LIMIT,
        "upload_limit_per_party": PER_PARTY_LIMIT,
        "parties": [
            {"address": "localhost:0", "cert": f"party{r}.pem", "key": f"party{r}.key"}
            for r in range(3)
        ],
    }
    config = config_from_dict(raw, directory)
    stores = [ModelStore() for _ in range(3)]
    services = [
        InferenceService(
            config,
            model_programs(store) | {"square_plus": square_plus},
            check=partial(check_request, store),
            model_owner=store.owner,
            session_owner=store.sessions.owner,
        )
        for store in stores
    ]
    bound, comms = serve_in_threads(config, services)
    yield bound, services, stores
    for comm in comms:
        comm.abort("test over")


def as_(config, name: str, cls=InferenceClient):
    directory = config.ca.parent
    return cls(config, directory / f"{name}.pem", directory / f"{name}.key")


def sign_flipped(model):
    with torch.no_grad():
        for param in model.parameters():
            param.neg_()
    return model


def test_only_owners_share_and_replacing_takes_the_owner(cluster) -> None:
    config, _, stores = cluster
    with as_(config, "owner", VeilClient) as owner:
        owner.share_model("bert", tiny_bert())
        shared = [store.get("bert") for store in stores]
        with (
            as_(config, "mallory", VeilClient) as mallory,
            pytest.raises(InferenceError, match="'mallory' may not share") as info,
        ):
            mallory.share_model("bert", sign_flipped(tiny_bert()))
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        with as_(config, "owner2", VeilClient) as owner2:
            with pytest.raises(InferenceError, match="it belongs to 'owner'") as info:
                owner2.share_model("bert", sign_flipped(tiny_bert()))
            assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
            owner2.share_model("special", tiny_bert())  # named its owner for this model
        assert all(store.get("bert") is model for store, model in zip(stores, shared))
        with pytest.raises(InferenceError, match="'owner' may not share.*'special'"):
            owner.share_model("special", tiny_bert())
        owner.share_model("bert", tiny_bert())  # its owner may replace it
    assert all(store.get("bert") is not model for store, model in zip(stores, shared))
    assert {store.owner("bert") for store in stores} == {"owner"}
    assert {store.owner("special") for store in stores} == {"owner2"}


def test_only_the_opener_of_a_share_session_adds_parts_to_it_or_commits_it(cluster) -> None:
    """A model shared in parts: another owner (who may share models of its own) can neither
    append a part to the open session nor commit it; its opener finishes it untouched."""
    from veil.nn.private import import_hf
    from veil.parties.models import SHARE_PROGRAM, WEIGHT_PREFIX, unique_params
    from veil.parties.share_sessions import part_options

    config, _, stores = cluster
    hf = tiny_bert()
    with torch.no_grad():
        params = unique_params(import_hf(hf))
    names = list(params)
    session = uuid.uuid4().hex
    options = {
        "model": "in-parts",
        "family": "BertModel",
        "config": hf.config.to_json_string(use_diff=False),
    }

    def send(who: str, index: int, group: list[str], last: bool) -> None:
        weights = [(WEIGHT_PREFIX + n, params[n].detach().float()) for n in group]
        placed = options | part_options(session, index, last)
        with as_(config, who) as api:
            api.infer(SHARE_PROGRAM, weights, placed, seeded=True)

    half = len(names) // 2
    send("owner", 0, names[:half], last=False)
    for last in (False, True):  # append a part; commit with the rest
        with pytest.raises(InferenceError, match="'owner2' may not add to or commit") as info:
            send("owner2", 1, names[half:], last)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "it belongs to 'owner'" in str(info.value)
    assert not any(store.has("in-parts") for store in stores)
    send("owner", 1, names[half:], last=True)
    assert {store.owner("in-parts") for store in stores} == {"owner"}


def test_a_request_belongs_to_the_client_that_created_it(cluster) -> None:
    config, services, _ = cluster
    x = torch.tensor([[1.5, -2.0], [0.25, 3.0]])
    request_id = uuid.uuid4().hex
    with as_(config, "client") as victim, as_(config, "mallory") as mallory:
        victim._upload(request_id, [("x", x)], timeout=30)
        run = veil_pb2.RunRequest(request_id=request_id, program="square_plus")
        for rank in range(3):  # hijack the request before its owner runs it
            with pytest.raises(grpc.RpcError) as info:
                mallory._stubs[rank].Run(run, timeout=30)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "'mallory' may not use request" in info.value.details()
        with pytest.raises(InferenceError, match="'mallory' may not use request") as info:
            mallory._upload(request_id, [("x", torch.zeros(2, 2))], timeout=30)
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        calls = [victim._stubs[rank].Run.future(run, timeout=60) for rank in range(3)]
        replies = [call.result() for call in calls]
        fetch = veil_pb2.FetchRequest(request_id=request_id, name="y")
        for rank in range(3):
            with pytest.raises(grpc.RpcError) as info:
                list(mallory._stubs[rank].Fetch(fetch, timeout=30))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        from veil.mpc.sharing import reconstruct

        pairs = [victim._fetch_call(rank, request_id, "y", 30).result(30) for rank in range(3)]
        y = reconstruct(pairs, replies[0].frac_bits["y"], victim.fxp)
    assert torch.allclose(y, (x * x).double(), atol=1e-3)
    assert all(s.limits.in_flight("client") == 0 for s in services)  # Run consumed them


def test_client_refuses_a_party_at_another_partys_address(cluster) -> None:
    config, services, _ = cluster
    wrong = config.with_addresses(
        [config.party(1).address] + [p.address for p in config.parties[1:]]
    )
    before = set(services[1]._requests)
    with as_(wrong, "client") as client, pytest.raises(InferenceError) as info:
        client.infer("square_plus", {"x": torch.ones(2)})
    assert info.value.rank == 0
    assert f"expected party 0 at {config.party(1).address}, reached party 1" in str(info.value)
    assert set(services[1]._requests) == before  # nothing was uploaded


def test_party_refuses_a_certificate_without_its_party_name(cluster) -> None:
    config, _, _ = cluster
    spec0, other = config.party(0), config.party(1)
    borrowed = replace(
        config, parties=(replace(spec0, cert=other.cert, key=other.key), *config.parties[1:])
    )
    with pytest.raises(ConfigError, match="lacks the name 'party0.veil'"):
        GrpcCommunicator(0, borrowed)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_upload_allocates_what_arrives_not_what_it_claims(cluster) -> None:
    config, services, _ = cluster
    elements = CLAIMED_BYTES // 8 // 2
    sent = threading.Event()
    finish = threading.Event()

    def messages():
        yield veil_pb2.UploadChunk(
            request_id=uuid.uuid4().hex,
            chunk=veil_pb2.TensorChunk(
                tag="x",
                dtype="int64",
                shape=[2, elements],
                chunk_index=0,
                chunk_count=CLAIMED_BYTES >> 20,
                data=bytes(1 << 20),
            ),
        )
        sent.set()
        finish.wait(30)

    before = rss_bytes()
    with as_(config, "client") as client:
        call = client._stubs[0].Upload.future(messages(), timeout=60)
        assert sent.wait(30)
        for _ in range(300):  # until party 0 holds the first chunk
            if services[0].limits.in_flight("client") > 0:
                break
            threading.Event().wait(0.1)
        growth = rss_bytes() - before
        finish.set()
        with pytest.raises(grpc.RpcError) as info:
            call.result()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # ended mid-tensor
    assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth} bytes for a {CLAIMED_BYTES}-byte claim"
    assert services[0].limits.in_flight("client") == 0


def test_upload_over_the_per_client_limit_is_refused(cluster) -> None:
    config, services, _ = cluster
    too_big = torch.zeros(PER_CLIENT_LIMIT // 16 + 1024)  # pairs of int64: 16 bytes each
    with as_(config, "client") as client:
        with pytest.raises(InferenceError, match="upload_limit_per_client") as info:
            client.infer("square_plus", {"x": too_big})
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert all(s.limits.in_flight("client") == 0 for s in services)
        out = client.infer("square_plus", {"x": torch.ones(3)})  # the party still serves
    assert torch.allclose(out["y"], torch.ones(3, dtype=torch.float64), atol=1e-3)


def test_limits_count_every_client_against_the_party_limit() -> None:
    limits = UploadLimits(per_client=10, per_party=15)
    limits.charge("a", 10)
    with pytest.raises(UploadRefused, match="'a'.*upload_limit_per_client"):
        limits.charge("a", 1)
    with pytest.raises(UploadRefused, match="upload_limit_per_party"):
        limits.charge("b", 6)
    limits.release("a", 10)
    limits.charge("b", 6)
    assert (limits.in_flight("a"), limits.in_flight("b")) == (0, 6)


def test_certs_cli_writes_owners_and_party_names(tmp_path) -> None:
    from veil.parties.certs import has_dns_name
    from veil.parties.cli import main
    from veil.parties.config import load_config

    assert main(["certs", "--out", str(tmp_path), "--owner=alice", "--client=bob"]) == 0
    config = load_config(tmp_path / "cluster.toml")
    assert (config.owners, config.clients) == (("alice",), ("bob",))
    assert (tmp_path / "alice.pem").is_file() and (tmp_path / "bob.pem").is_file()
    for spec in config.parties:
        cert = spec.cert.read_bytes()
        assert has_dns_name(cert, f"{spec.name}.veil")
        others = [p.name for p in config.parties if p.name != spec.name]
        assert not any(has_dns_name(cert, f"{name}.veil") for name in others)


@pytest.mark.parametrize(
    "models, message",
    [
        ({"m": {"owners": ["party1"]}}, r"\[models.m\] 'owners' must list names distinct"),
        ({"m": {"owner": ["alice"]}}, r"\[models.m\] must have exactly one key"),
        ({"m": ["alice"]}, r"\[models.m\] must have exactly one key"),
    ],
)
def test_invalid_model_owners_named(models, message) -> None:
    raw = {
        "insecure": True,
        "models": models,
        "parties": [{"address": f"localhost:{50051 + r}"} for r in range(3)],
    }
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
