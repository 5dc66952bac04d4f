"""The ``veil`` command line.

    veil certs  --out DIR [--address H:P ...] [--host H ...] [--client NAME ...]
    veil party  --config C --rank I [--run MODULE:FUNCTION] [--insecure]
    veil launch --config C [--run MODULE:FUNCTION] [--insecure]
    veil demo   [demo options]          (see ``veil demo --help``)

``party`` runs one compute party: it connects to its peers over mutual TLS, agrees
PRG keys, runs an SPMD program ``fn(party)`` (default: the cluster health check in
:mod:`parties.health`), prints its result and exits.  ``launch`` does that for all
three parties on this machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
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
        ("launch", "run all three parties on this machine", _launch),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--config", required=True, help="cluster config (.toml or .json)")
        if name == "party":
            cmd.add_argument("--rank", required=True, type=int)
        cmd.add_argument(
            "--run",
            default=DEFAULT_PROGRAM,
            metavar="MODULE:FUNCTION",
            help=f"SPMD program fn(party) to run (default {DEFAULT_PROGRAM})",
        )
        cmd.add_argument("--device", default="cpu", help="torch device for the shares")
        cmd.add_argument(
            "--insecure",
            action="store_true",
            help="plaintext, unauthenticated links (local tests only)",
        )
        cmd.set_defaults(handler=handler)

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
        # One write(2) per report: lines of the three parties sharing a terminal or pipe
        # must not interleave mid-line.
        sys.stdout.flush()
        os.write(sys.stdout.fileno(), f"{result}\n".encode())
    return 0


def _launch(args: argparse.Namespace) -> int:
    from parties.config import ConfigError, load_config
    from parties.launch import launch

    try:
        load_config(args.config, insecure=True if args.insecure else None)  # fail before forking
    except ConfigError as exc:
        print(f"veil launch: {exc}", file=sys.stderr)
        return 2
    extra = ["--run", args.run, "--device", args.device] + (["--insecure"] if args.insecure else [])
    return launch(args.config, extra)


def _load_program(spec: str) -> Callable[[Any], Any]:
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
