"""The ``veil`` command line.

    veil certs  --out DIR [--address H:P ...] [--host H ...] [--client NAME ...]
    veil party  --config C --rank I [--run MODULE:FUNCTION] [--insecure]
    veil serve  --config C --rank I --program NAME=MODULE:FUNCTION ... [--insecure]
    veil launch --config C [--run MODULE:FUNCTION | --serve --program ...] [--insecure]
    veil infer  --config C --program NAME --input NAME=FILE.pt ... --out FILE.pt
    veil demo   [demo options]          (see ``veil demo --help``)

``party`` runs one compute party: it connects to its peers over mutual TLS, agrees
PRG keys, runs an SPMD program ``fn(party)`` (default: the cluster health check in
:mod:`parties.health`), prints its result and exits.  ``serve`` runs a party that
serves inference programs (:mod:`parties.service`) to clients until stopped.
``launch`` runs all three parties on this machine, either way.  ``infer`` is the
client: it secret-shares tensors saved with ``torch.save``, runs a program on them and
saves the reconstructed outputs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_PROGRAM = "parties.health:check"
DEFAULT_BASE_PORT = 50051


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from nn.demo import main as demo_main  # heavy (models): import only when asked

        return demo_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veil", description="Three-party secure inference.")
    sub = parser.add_subparsers(dest="command")

    certs = sub.add_parser("certs", help="create a cluster CA, party and client certificates")
    certs.add_argument("--out", required=True, type=Path, help="directory to write into")
    certs.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="party addresses, in rank order (default localhost:50051..50053)",
    )
    certs.add_argument("--host", action="append", default=[], help="extra SAN for every party")
    certs.add_argument(
        "--client", action="append", default=[], help="client name (default: client)"
    )
    certs.set_defaults(handler=_certs)

    for name, helptext, handler in (
        ("party", "run one compute party", _party),
        ("serve", "run one compute party serving inference programs", _serve),
        ("launch", "run all three parties on this machine", _launch),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--config", required=True, help="cluster config (.toml or .json)")
        if name in ("party", "serve"):
            cmd.add_argument("--rank", required=True, type=int)
        if name in ("party", "launch"):
            cmd.add_argument(
                "--run",
                default=DEFAULT_PROGRAM,
                metavar="MODULE:FUNCTION",
                help=f"SPMD program fn(party) to run (default {DEFAULT_PROGRAM})",
            )
        if name == "launch":
            cmd.add_argument("--serve", action="store_true", help="run `veil serve` parties")
        if name in ("serve", "launch"):
            cmd.add_argument(
                "--program",
                action="append",
                default=[],
                metavar="NAME=MODULE:FUNCTION",
                help="a program fn(party, inputs, options) -> outputs to serve as NAME",
            )
        cmd.add_argument("--device", default="cpu", help="torch device for the shares")
        cmd.add_argument(
            "--insecure",
            action="store_true",
            help="plaintext, unauthenticated links (local tests only)",
        )
        cmd.set_defaults(handler=handler)

    infer = sub.add_parser("infer", help="run a served program on secret-shared inputs")
    infer.add_argument("--config", required=True)
    infer.add_argument("--program", required=True, help="name of a served program")
    infer.add_argument(
        "--input", action="append", default=[], metavar="NAME=FILE.pt", help="a torch.save'd tensor"
    )
    infer.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    infer.add_argument(
        "--out", required=True, type=Path, help="torch.save the outputs (a dict) here"
    )
    infer.add_argument(
        "--cert", type=Path, help="client certificate (default: <config dir>/client.pem)"
    )
    infer.add_argument("--key", type=Path, help="client key (default: <config dir>/client.key)")
    infer.add_argument("--insecure", action="store_true", help="plaintext (local tests only)")
    infer.set_defaults(handler=_infer)

    sub.add_parser("demo", help="MiniLM / SmolLM2 demo (see veil demo --help)")
    return parser


def _certs(args: argparse.Namespace) -> int:
    from parties.certs import cluster_config_toml, write_cluster_certs
    from parties.config import ConfigError, parse_address

    addresses = args.address or [f"localhost:{DEFAULT_BASE_PORT + rank}" for rank in range(3)]
    if len(addresses) != 3:
        print(
            "veil certs: give --address three times (party 0, 1, 2) or not at all", file=sys.stderr
        )
        return 2
    try:
        hosts = [parse_address(a, f"--address {a}")[0] for a in addresses]
    except ConfigError as exc:
        print(f"veil certs: {exc}", file=sys.stderr)
        return 2
    names = ("party0", "party1", "party2")
    clients = tuple(args.client) or ("client",)
    write_cluster_certs(
        args.out,
        hosts=tuple(dict.fromkeys(hosts + args.host)),
        party_names=names,
        client_names=clients,
    )
    config = args.out / "cluster.toml"
    config.write_text(cluster_config_toml(names, tuple(addresses), clients))
    print(f"wrote the CA, certificates for {', '.join(names + clients)} and {config}")
    return 0


def _party(args: argparse.Namespace) -> int:
    from mpc.communicator import PeerError
    from mpc.fixedpoint import FixedPoint
    from mpc.party import Party
    from parties.config import ConfigError, load_config
    from parties.grpc_comm import connect_party

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        config = load_config(args.config, insecure=True if args.insecure else None)
        config.party(args.rank)
        program = _load_program(args.run)
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"veil party: {exc}", file=sys.stderr)
        return 2
    try:
        comm = connect_party(config, args.rank, device=args.device)
    except (PeerError, ConfigError) as exc:
        print(f"party {args.rank}: {exc}", file=sys.stderr)
        return 1
    try:
        party = Party(comm, fxp=FixedPoint(config.frac_bits), device=args.device)
        result = program(party)
    except BaseException as exc:
        comm.abort(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise
        print(f"party {args.rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    comm.close()
    if result is not None:
        _report(str(result))
    return 0


def _launch(args: argparse.Namespace) -> int:
    from parties.config import ConfigError, load_config
    from parties.launch import launch

    try:
        load_config(args.config, insecure=True if args.insecure else None)  # fail before forking
    except ConfigError as exc:
        print(f"veil launch: {exc}", file=sys.stderr)
        return 2
    if args.serve:
        if not args.program:
            print("veil launch: --serve needs at least one --program", file=sys.stderr)
            return 2
        extra = [f"--program={spec}" for spec in args.program]
    else:
        extra = ["--run", args.run]
    extra += ["--device", args.device] + (["--insecure"] if args.insecure else [])
    return launch(args.config, extra, command="serve" if args.serve else "party")


def _serve(args: argparse.Namespace) -> int:
    from mpc.communicator import PeerError
    from parties.config import ConfigError, load_config
    from parties.service import start_serving

    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        config = load_config(args.config, insecure=True if args.insecure else None)
        spec = config.party(args.rank)
        programs = dict(_named_program(entry) for entry in args.program)
        if not programs:
            raise ValueError("give at least one --program NAME=MODULE:FUNCTION")
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"veil serve: {exc}", file=sys.stderr)
        return 2
    try:
        service, party = start_serving(config, args.rank, programs, device=args.device)
    except (PeerError, ConfigError) as exc:
        print(f"party {args.rank}: {exc}", file=sys.stderr)
        return 1
    _report(f"party {args.rank}: serving {', '.join(sorted(programs))} at {spec.address}")
    comm = party.comm
    while not (stopping.is_set() or service.stopped.is_set() or comm.gone):
        stopping.wait(0.2)
    if service.failed is not None or (comm.gone and not stopping.is_set()):
        reason = service.failed or "; ".join(f"party {p}: {why}" for p, why in comm.gone.items())
        print(f"party {args.rank}: stopped: {reason}", file=sys.stderr)
        comm.abort(str(reason))
        return 1
    comm.close()
    return 0


def _infer(args: argparse.Namespace) -> int:
    import torch

    from parties.client import InferenceClient, InferenceError
    from parties.config import ConfigError, load_config

    try:
        config = load_config(args.config, insecure=True if args.insecure else None)
        inputs = {name: torch.load(path, weights_only=True) for name, path in _pairs(args.input)}
        options = dict(_pairs(args.option))
    except (ConfigError, ValueError, OSError) as exc:
        print(f"veil infer: {exc}", file=sys.stderr)
        return 2
    base = Path(args.config).parent
    cert = args.cert or base / f"{config.clients[0]}.pem"
    key = args.key or base / f"{config.clients[0]}.key"
    try:
        with InferenceClient(config, cert=cert, key=key) as client:
            outputs = client.infer(args.program, inputs, options)
    except (InferenceError, ConfigError) as exc:
        print(f"veil infer: {exc}", file=sys.stderr)
        return 1
    torch.save(outputs, args.out)
    print(f"wrote {', '.join(outputs)} to {args.out}")
    return 0


def _pairs(entries: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for entry in entries:
        name, sep, value = entry.partition("=")
        if not sep or not name:
            raise ValueError(f"expected NAME=VALUE, got {entry!r}")
        pairs.append((name, value))
    return pairs


def _named_program(entry: str) -> tuple[str, Callable[..., Any]]:
    ((name, spec),) = _pairs([entry])
    return name, _load_program(spec)


def _report(line: str) -> None:
    """One write(2) per line: lines of three parties sharing a pipe must not interleave."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def _load_program(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--run expects MODULE:FUNCTION, got {spec!r}")
    try:
        program = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load program {spec!r}: {exc}") from None
    if not callable(program):
        raise TypeError(f"program {spec!r} is not callable")
    return program


if __name__ == "__main__":
    raise SystemExit(main())
