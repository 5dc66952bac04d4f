"""Streaming generation over gRPC: tokens reach the client while the parties still work,
equal the non-streaming answer, and an opt-in early stop ends the parties' work cleanly.

Three serving parties run as threads of this process with mutual TLS on loopback and serve
the tiny seeded one-layer GPT-2 of :mod:`tests.parties.test_models`.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import partial

import grpc
import pytest
import torch

from veil.parties.certs import write_cluster_certs
from veil.parties.client import InferenceClient, InferenceError, VeilClient
from veil.parties.config import config_from_dict
from veil.parties.models import GENERATE_PROGRAM, ModelStore, check_request, model_programs
from veil.parties.service import InferenceService, RequestLog
from veil.parties.testing import serve_in_threads
from veil.proto import veil_pb2

from .test_models import tiny_gpt2

PROMPT = torch.tensor([[1, 5, 9, 20, 3, 7]])
STEPS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(bound config, services, {generate request id: times the parties finished it},
    the config's file)."""
    directory = tmp_path_factory.mktemp("streaming")
    write_cluster_certs(directory, client_names=("client",), owner_names=("owner",))
    raw = {
        "ca": "ca.pem",
        "timeout": 20.0,
        "clients": ["client"],
        "owners": ["owner"],
        "parties": [
            {"address": "localhost:0", "cert": f"party{r}.pem", "key": f"party{r}.key"}
            for r in range(3)
        ],
    }
    config = config_from_dict(raw, directory)
    finished: dict[str, list[float]] = {}

    def record(entry: RequestLog) -> None:
        if entry.program == GENERATE_PROGRAM:
            finished.setdefault(entry.request_id, []).append(time.monotonic())

    stores = [ModelStore() for _ in range(3)]
    services = [
        InferenceService(
            config, model_programs(store), check=partial(check_request, store), on_request=record
        )
        for store in stores
    ]
    bound, comms = serve_in_threads(config, services)
    for spec, entry in zip(bound.parties, raw["parties"]):
        entry["address"] = f"localhost:{spec.port}"
    path = directory / "cluster.json"
    path.write_text(json.dumps(raw))
    with client_of(bound, "owner") as owner:
        owner.share_model("gpt", tiny_gpt2(n_layer=1))
    yield bound, services, finished, path
    for comm in comms:
        comm.abort("test over")


def client_of(config, name: str = "client") -> VeilClient:
    directory = config.ca.parent
    return VeilClient(config, directory / f"{name}.pem", directory / f"{name}.key")


@pytest.fixture(scope="module")
def expected() -> torch.Tensor:
    """Hugging Face's greedy continuation of PROMPT (the private one equals it)."""
    with torch.no_grad():
        out = tiny_gpt2(n_layer=1).generate(
            PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=STEPS,
            do_sample=False, pad_token_id=0,
        )
    return out[:, PROMPT.shape[1] :]


def test_tokens_arrive_before_the_parties_finish(cluster, expected) -> None:
    bound, _, finished, _ = cluster
    steps, arrived = [], []
    with client_of(bound) as client:
        before = set(finished)
        for step in client.generate_stream("gpt", PROMPT, STEPS):
            arrived.append(time.monotonic())
            steps.append(step)
        (request_id,) = set(finished) - before
        whole = client.generate("gpt", PROMPT, STEPS)
    assert torch.stack(steps, dim=-1).tolist() == whole.tolist() == expected.tolist()
    assert len(finished[request_id]) == 3  # every party finished the streamed request
    assert arrived[0] < min(finished[request_id]), "the first token came only at the end"
    assert arrived == sorted(arrived) and arrived[-1] - arrived[0] > 0


def test_early_stop_is_opt_in_and_ends_the_parties_work(cluster, expected) -> None:
    bound, services, _, _ = cluster
    row = expected[0].tolist()
    eos = row[2]  # pretend the third token ends the sequence
    long = STEPS + 2
    with client_of(bound) as client:
        client.generate("gpt", PROMPT, long)
        full = [p.bytes_sent for p in client.last_cost.parties]
        default = client.generate_stream("gpt", PROMPT, long)
        assert next(default).tolist() == [row[0]]
        default.close()  # not stoppable: the parties still run every step
        kept = [p.bytes_sent for p in client.last_cost.parties]
        stopped = [s.item() for s in client.generate_stream("gpt", PROMPT, long, stop_at_eos=eos)]
        early = [p.bytes_sent for p in client.last_cost.parties]
        again = client.generate("gpt", PROMPT, STEPS)
    assert stopped == row[: row.index(eos) + 1]
    assert kept == full, "closing a default stream changed what the parties did"
    assert all(e < f for e, f in zip(early, full)), (early, full)  # fewer steps were run
    assert again.tolist() == expected.tolist()  # later requests work
    assert [len(s.steps) for s in services] == [0, 0, 0]  # no stream left behind


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"stream": "yes"}, "'stream' must be true or false"),
        ({"stoppable": "true"}, "a stoppable request must stream"),
    ],
)
def test_stream_options_checked(options, why) -> None:
    from veil.parties.validation import ModelSpec, RequestInvalid, check_task

    model = tiny_gpt2(n_layer=1)
    spec = ModelSpec.from_config("GPT2LMHeadModel", model.config.to_json_string())
    with pytest.raises(RequestInvalid, match=why):
        check_task(
            GENERATE_PROGRAM,
            {"model": "gpt", "max_new_tokens": "2", **options},
            {"input_ids": ((1, 3), 0)},
            spec,
        )


def test_steps_of_a_request_go_only_to_its_client(cluster) -> None:
    bound, _, _, _ = cluster
    directory = bound.ca.parent
    request_id = uuid.uuid4().hex
    with InferenceClient(bound, directory / "client.pem", directory / "client.key") as client:
        client._upload(request_id, [("input_ids", PROMPT)], timeout=30)
        with InferenceClient(bound, directory / "owner.pem", directory / "owner.key") as other:
            fetch = veil_pb2.FetchRequest(request_id=request_id, name="tokens")
            with pytest.raises(grpc.RpcError) as refused:
                list(other._stubs[1].FetchSteps(fetch, timeout=30))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            unknown = veil_pb2.FetchRequest(request_id=uuid.uuid4().hex, name="tokens")
            with pytest.raises(grpc.RpcError) as missing:
                list(client._stubs[2].FetchSteps(unknown, timeout=30))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_refused_streaming_request_fails_at_once_and_leaves_nothing(cluster) -> None:
    from veil.parties.client_stream import stream_steps

    bound, services, _, _ = cluster
    start = time.monotonic()
    with client_of(bound) as client:
        options = {"model": "gpt", "max_new_tokens": "0"}  # refused when Run arrives
        steps = stream_steps(client.api, GENERATE_PROGRAM, {"input_ids": PROMPT}, options, "tokens")
        with pytest.raises(InferenceError, match="max_new_tokens must be in 1..256, got 0"):
            next(steps)
    assert time.monotonic() - start < bound.timeout, "the client waited for the stream's timeout"
    deadline = time.monotonic() + bound.timeout  # generous: a loaded 2-core machine
    while any(len(s.steps) for s in services) and time.monotonic() < deadline:
        time.sleep(0.1)  # a FetchSteps call ends when the party sees it cancelled
    assert [len(s.steps) for s in services] == [0, 0, 0]
