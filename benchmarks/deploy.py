"""The deployment as users run it: three party processes with mTLS, each in its own network
namespace, joined through veth pairs and a bridge and rate-limited with tbf, beside the
in-memory simulation of the same model in the same run.

    sudo python -m benchmarks.deploy                      # MiniLM, BERT-base seq 128, SmolLM2
    sudo python -m benchmarks.deploy --models minilm --rate 5gbit --rate 100mbit
    python -m benchmarks.deploy --loopback                # no namespaces: loopback ports

Topology: party r runs in namespace ``veil<id>p<r>`` with address 10.231.<k>.<r+1>; a veth
pair joins it to a bridge in the root namespace, where the client runs (10.231.<k>.254).
Every veth end carries ``tc qdisc ... tbf rate RATE``, so each party's traffic in each
direction is limited to RATE.  This kernel has no netem, so no delay is added: the LAN/WAN
columns add critical-path rounds x RTT (1 ms LAN, 40 ms WAN) to the measured wall time.

For each model and rate it prints the deployed and the in-memory wall time, their ratio,
bytes sent per party and critical-path rounds (from the parties' logs; they must equal the
in-memory counters), and the network estimates.  Each party process gets its share of the
cores for PyTorch's threads (:mod:`veil.parties.host_threads`), as ``veil launch`` gives it;
the in-memory simulation keeps PyTorch's default (all cores, shared by its three parties).  Namespaces, interfaces and processes are
removed whatever happens (normal end, an error, Ctrl-C or SIGTERM).  Without root (or
without ``ip``), it says so and falls back to loopback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from benchmarks.grpc_e2e import REPO, Case, Cluster, Row, in_memory, minilm_case, over_grpc
from benchmarks.harness import NETWORKS
from veil.parties.host_threads import THREADS_VARIABLE, shared_host_env

if TYPE_CHECKING:
    from typing_extensions import Self

PARTY_PORT = 50051
RATES = {"5gbit": "PUMA's LAN", "100mbit": "a WAN link"}


class NamespaceError(RuntimeError):
    """Network namespaces could not be set up (not root, no ``ip``, no bridge support)."""


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {out.stderr.strip()}")


class Namespaces:
    """Three namespaces on a bridge, each link shaped by tbf; a context manager that cleans up."""

    def __init__(self, rate: str):
        self.rate = rate
        tag = os.getpid() % 100000
        self.subnet = f"10.231.{os.getpid() % 250}"
        self.bridge = f"vb{tag}"
        self.names = [f"veil{tag}p{r}" for r in range(3)]
        self.outer = [f"vl{tag}{r}a" for r in range(3)]
        self.inner = [f"vl{tag}{r}b" for r in range(3)]

    def address(self, rank: int) -> str:
        return f"{self.subnet}.{rank + 1}"

    def __enter__(self) -> Self:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
            raise NamespaceError("network namespaces need root and the ip and tc commands")
        try:
            self._create()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for rank, (ns, outer, inner) in enumerate(zip(self.names, self.outer, self.inner)):
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(rank)}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self._shape(outer)
            self._shape(inner, ns)

    def _shape(self, device: str, ns: str | None = None) -> None:
        prefix = ["ip", "netns", "exec", ns] if ns else []
        command = [*prefix, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", self.rate,
                   "burst", "4mb", "latency", "100ms"]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise NamespaceError(f"{' '.join(command)}: {out.stderr.strip()}")

    def remove(self) -> None:
        """Delete what exists of the namespaces, veths (deleting one end removes both) and bridge."""
        for ns in self.names:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        for device in [*self.outer, self.bridge]:
            subprocess.run(["ip", "link", "delete", device], capture_output=True, check=False)


class NamespacedCluster(Cluster):
    """Party r serves from namespace r (``ip netns exec``); the client stays in the root one."""

    def __init__(self, directory: Path, namespaces: Namespaces):
        self.namespaces = namespaces
        self.procs: list[subprocess.Popen] = []
        try:
            super().__init__(directory)
        except BaseException:
            self.stop_parties()
            raise

    def addresses(self) -> list[str]:
        return [f"{self.namespaces.address(r)}:{PARTY_PORT}" for r in range(3)]

    def start_parties(self) -> None:
        with self.log.open("w") as sink:
            for rank, ns in enumerate(self.namespaces.names):
                command = ["ip", "netns", "exec", ns, sys.executable, "-m", "veil.parties.cli",
                           "serve", "--config", str(self.config_path), "--rank", str(rank)]
                self.procs.append(subprocess.Popen(
                    command, env={**shared_host_env(), "PYTHONPATH": str(REPO)}, cwd=REPO,
                    stdout=sink, stderr=subprocess.STDOUT,
                ))

    def running(self) -> bool:
        return all(proc.poll() is None for proc in self.procs)

    def stop_parties(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def bert_base_case(seq: int) -> Case:
    import transformers

    torch.manual_seed(0)  # model weights and inputs only; protocol randomness is AES-CTR
    hf = transformers.BertModel(transformers.BertConfig(), add_pooling_layer=False).eval()
    ids = torch.randint(0, hf.config.vocab_size, (1, seq))
    return Case(f"BERT-base (seeded), embed, seq {seq}", hf, "embed", ids, torch.ones_like(ids))


def smollm2_case(seq: int, new_tokens: int) -> Case:
    from benchmarks.models import SMOLLM2_TEXT
    from veil.nn.demo import load_smollm2

    hf, tokenizer = load_smollm2()
    ids = tokenizer(SMOLLM2_TEXT, return_tensors="pt")["input_ids"][:, :seq]
    return Case(f"SmolLM2-135M, {ids.shape[1]}-token prompt + {new_tokens} generated", hf,
                "generate", ids, torch.ones_like(ids), new_tokens)


CASES = {
    "minilm": lambda args: minilm_case(),
    "bert": lambda args: bert_base_case(args.seq),
    "smollm2": lambda args: smollm2_case(32, args.new_tokens),
}


def print_row(case: Case, rate: str, memory: Row, deployed: Row, share_s: float) -> None:
    same = memory.bytes_sent == deployed.bytes_sent and memory.depth == deployed.depth
    estimates = "; ".join(
        f"{net} ({rtt * 1e3:g} ms RTT) {deployed.wall_s + deployed.depth * rtt:.1f} s"
        for net, (_, rtt) in NETWORKS.items()
    )
    print(
        f"| {case.name} | {rate} | {deployed.wall_s:.2f} | {memory.wall_s:.2f} | "
        f"{deployed.wall_s / memory.wall_s:.2f}x | "
        f"{'/'.join(f'{b / 1e6:.1f}' for b in deployed.bytes_sent)} | {deployed.depth} | "
        f"{'yes' if same else 'NO'} | {estimates} | {share_s:.1f} |",
        flush=True,
    )


HEADER = (
    "| model | link rate | deployed wall s | in-memory wall s | ratio | MB sent per party "
    "(P0/P1/P2) | critical-path rounds | bytes and rounds = in-memory | wall + rounds x RTT "
    "| weights shared in s |\n|---|---|---|---|---|---|---|---|---|---|"
)


def run(args: argparse.Namespace) -> int:
    rates = ["loopback"] if args.loopback else (args.rate or ["5gbit"])
    print(HEADER, flush=True)
    for model in args.models.split(","):
        case = CASES[model](args)
        memory = in_memory(case, args.repeats)
        for rate in rates:
            with tempfile.TemporaryDirectory(prefix="veil-deploy-") as tmp, ExitStack() as stack:
                if args.loopback:
                    cluster = Cluster(Path(tmp))
                else:
                    cluster = NamespacedCluster(Path(tmp), stack.enter_context(Namespaces(rate)))
                stack.callback(cluster.close)  # before the namespaces go (last in, first out)
                deployed, share_s = over_grpc(cluster, case, model, args.repeats)
            print_row(case, rate, memory, deployed, share_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,bert,smollm2",
                        help="comma-separated: minilm, bert, smollm2")
    parser.add_argument("--rate", action="append",
                        help="tbf rate per link, repeatable (default 5gbit; 100mbit for a WAN run)")
    parser.add_argument("--seq", type=int, default=128, help="BERT sequence length")
    parser.add_argument("--new-tokens", type=int, default=8, help="SmolLM2 generated tokens")
    parser.add_argument("--repeats", type=int, default=1, help="timed requests after a warm-up")
    parser.add_argument("--loopback", action="store_true", help="skip namespaces (loopback ports)")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(CASES)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}; choose from {sorted(CASES)}")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run finally:
    if not args.loopback:
        try:
            with Namespaces("1gbit"):
                pass
        except NamespaceError as exc:
            print(f"cannot create network namespaces ({exc}); falling back to loopback",
                  file=sys.stderr)
            args.loopback = True
    print(f"torch threads: {torch.get_num_threads()} in memory, "
          f"{shared_host_env()[THREADS_VARIABLE]} per party process; "
          f"load average: {os.getloadavg()}")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
