"""End-to-end private inference over gRPC (three party processes) vs the in-memory simulation.

    python -m benchmarks.grpc_e2e                   # tiny seeded BERT embed + GPT-2 generate
    python -m benchmarks.grpc_e2e --models minilm   # the bundled all-MiniLM-L6-v2, 2 sentences
    python -m benchmarks.grpc_e2e --repeats 3 --seq 16 --new-tokens 4

gRPC: `veil launch --serve` on loopback with mutual TLS (fresh certificates), the model
owner shares the weights once with :class:`veil.parties.client.VeilClient`, then the client
runs the request ``--repeats`` times (after one warm-up).  Wall time is what the client
waits (upload, queueing, the MPC program, fetch, reconstruction); bytes, messages and
rounds (critical-path rounds and send steps) are each party's communicator counters for
the program, as the parties log
them; *wire* is the serialized TensorChunk bytes each party sent for the request
(payload + protobuf framing, plus the request's two small control messages; HTTP/2 and
TLS framing come on top).

In memory: :class:`veil.nn.private.PrivateModel` runs the same model code with the three
parties as threads of this process (zero-copy); wall time is the slowest party's.

On one host the three processes and gRPC's threads share the cores (2 here), so the
gRPC wall times are an upper bound for a deployment with a machine per party.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
_LOG_LINE = re.compile(
    r"party (\d): request \w+ (\S+) ok in ([\d.]+) s: sent (\d+) B in (\d+) messages, "
    r"(\d+) rounds, depth (\d+); wire (\d+) B"
)


@dataclass
class Row:
    transport: str
    wall_s: float  # what the caller waits for one request
    party_s: float  # the slowest party's time for the request
    bytes_sent: list[int]
    messages: list[int]
    rounds: int  # send steps of the busiest party
    depth: int  # critical-path rounds
    wire: list[int] | None = None


@dataclass
class Case:
    name: str
    hf: Any
    task: str  # embed | generate
    ids: torch.Tensor
    mask: torch.Tensor
    new_tokens: int = 0


def tiny_cases(seq: int, new_tokens: int) -> list[Case]:
    import transformers

    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=128,
        )
    ).eval()
    gpt = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    ).eval()
    ids = torch.randint(1, 1000, (1, seq))
    mask = torch.ones_like(ids)
    return [
        Case(f"tiny BERT (2x64, vocab 1000), embed, seq {seq}", bert, "embed", ids, mask),
        Case(
            f"tiny GPT-2 (2x64, vocab 1000), {seq} in + {new_tokens} out",
            gpt,
            "generate",
            ids,
            mask,
            new_tokens,
        ),
    ]


def minilm_case() -> Case:
    from veil.nn.demo import DEFAULT_SENTENCES, load_minilm

    hf, tokenizer = load_minilm()
    enc = tokenizer(DEFAULT_SENTENCES[:2], padding=True, return_tensors="pt")
    seq = enc["input_ids"].shape[1]
    return Case(
        f"all-MiniLM-L6-v2, embed, 2 sentences x {seq} tokens",
        hf,
        "embed",
        enc["input_ids"],
        enc["attention_mask"],
    )


def in_memory(case: Case, repeats: int) -> Row:
    from veil.nn.private import PrivateModel

    model = PrivateModel.from_hf(case.hf)

    def request():
        if case.task == "embed":
            return model.sentence_embedding(case.ids, case.mask)
        return model.generate(case.ids, case.new_tokens)

    request()  # warm-up
    start = time.perf_counter()
    results = [request() for _ in range(repeats)]
    wall = (time.perf_counter() - start) / repeats
    result = results[-1]
    return Row(
        "in-memory (3 threads)",
        wall,
        sum(r.wall_s for r in results) / repeats,
        [r.traffic.bytes_sent for r in result.reports],
        [r.traffic.messages_sent for r in result.reports],
        result.max_rounds,
        result.depth,
    )


class Cluster:
    """`veil launch --serve` on free loopback ports with fresh certificates.

    Subclasses place the parties elsewhere by overriding :meth:`addresses`,
    :meth:`start_parties`, :meth:`running` and :meth:`stop_parties`.
    """

    def __init__(self, directory: Path):
        from veil.parties.cli import main

        addresses = [f"--address={address}" for address in self.addresses()]
        if main(["certs", "--out", str(directory), *addresses]) != 0:
            raise RuntimeError("veil certs failed")
        self.config_path = directory / "cluster.toml"
        self.log = directory / "launch.log"
        self.start_parties()
        from veil.parties.client import VeilClient
        from veil.parties.config import load_config

        config = load_config(self.config_path)
        self.client = VeilClient(config, directory / "client.pem", directory / "client.key")
        self.owner = VeilClient(config, directory / "owner.pem", directory / "owner.key")

    def addresses(self) -> list[str]:
        return [f"localhost:{port}" for port in _free_ports(3)]

    def start_parties(self) -> None:
        with self.log.open("w") as sink:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "veil.parties.cli",
                    "launch",
                    "--config",
                    str(self.config_path),
                    "--serve",
                    "--restarts",
                    "0",
                ],
                env={**os.environ, "PYTHONPATH": str(REPO)},
                cwd=REPO,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop_parties(self) -> None:
        from veil.parties.launch import stop_launcher

        stop_launcher(self.proc)  # SIGINT, then SIGTERM and SIGKILL: nothing left listening

    def share(self, name: str, hf: Any, deadline_s: float = 120.0) -> float:
        from veil.parties.client import InferenceError

        deadline = time.monotonic() + deadline_s
        while True:
            start = time.perf_counter()
            try:
                self.owner.share_model(name, hf)
                return time.perf_counter() - start
            except InferenceError:
                if time.monotonic() > deadline or not self.running():
                    raise
                time.sleep(0.5)

    def party_lines(self, program: str, count: int) -> list[list[tuple]]:
        """The last ``count`` log entries of ``program`` per party."""
        time.sleep(0.5)  # let the parties' log lines land
        entries: dict[int, list[tuple]] = {0: [], 1: [], 2: []}
        for match in _LOG_LINE.finditer(self.log.read_text()):
            if match.group(2) == program:
                seconds = float(match.group(3))
                counters = tuple(int(g) for g in match.groups()[3:])
                entries[int(match.group(1))].append((seconds, *counters))
        return [entries[rank][-count:] for rank in range(3)]

    def close(self) -> None:
        self.client.close()
        self.owner.close()
        self.stop_parties()


def over_grpc(cluster: Cluster, case: Case, name: str, repeats: int) -> tuple[Row, float]:
    share_s = cluster.share(name, case.hf)

    def request() -> torch.Tensor:
        if case.task == "embed":
            return cluster.client.embed(name, case.ids, case.mask)
        return cluster.client.generate(name, case.ids, case.new_tokens)

    request()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        request()
    wall = (time.perf_counter() - start) / repeats
    program = "veil.embed" if case.task == "embed" else "veil.generate"
    lines = cluster.party_lines(program, repeats)
    party_s = sum(max(lines[r][k][0] for r in range(3)) for k in range(repeats)) / repeats
    last = [lines[r][-1] for r in range(3)]
    row = Row(
        "gRPC mTLS (3 processes)",
        wall,
        party_s,
        [entry[1] for entry in last],
        [entry[2] for entry in last],
        max(entry[3] for entry in last),
        max(entry[4] for entry in last),
        [entry[5] for entry in last],
    )
    return row, share_s


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def print_table(case: Case, rows: list[Row], share_s: float) -> None:
    print(f"\n### {case.name}\n")
    print(f"weights shared once over gRPC in {share_s:.2f} s\n")
    print(
        "| transport | client wall s | party s | bytes sent per party (P0/P1/P2) | messages per party "
        "| critical-path rounds | send steps | wire bytes per party | framing |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        wire = "/".join(f"{w:,}" for w in row.wire) if row.wire else "-"
        framing = f"+{(sum(row.wire) / sum(row.bytes_sent) - 1) * 100:.2f}%" if row.wire else "-"
        print(
            f"| {row.transport} | {row.wall_s:.2f} | {row.party_s:.2f} | {'/'.join(f'{b:,}' for b in row.bytes_sent)} "
            f"| {'/'.join(str(m) for m in row.messages)} | {row.depth} | {row.rounds} | {wire} | {framing} |"
        )
    same_bytes = rows[0].bytes_sent == rows[1].bytes_sent
    same_messages = rows[0].messages == rows[1].messages
    same_multiset = sorted(rows[0].messages) == sorted(rows[1].messages)
    print(
        f"\nbytes sent per party identical across transports: {'yes' if same_bytes else 'NO'}; "
        f"messages per party identical: {'yes' if same_messages else 'NO'}"
        + ("" if same_messages or not same_multiset else " (same counts, different parties)")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=["tiny", "minilm", "all"], default="tiny")
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cases = []
    if args.models in ("tiny", "all"):
        cases += tiny_cases(args.seq, args.new_tokens)
    if args.models in ("minilm", "all"):
        cases.append(minilm_case())
    with tempfile.TemporaryDirectory(prefix="veil-e2e-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            for index, case in enumerate(cases):
                memory = in_memory(case, args.repeats)
                grpc_row, share_s = over_grpc(cluster, case, f"model{index}", args.repeats)
                print_table(case, [memory, grpc_row], share_s)
        finally:
            cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
