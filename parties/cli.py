"""The ``veil`` command line.

    veil certs  --out DIR [--address H:P ...] [--host H ...] [--client NAME ...] [--owner NAME ...]
    veil party  --config C --rank I [--run MODULE:FUNCTION] [--insecure]
    veil serve  --config C --rank I [--program NAME=MODULE:FUNCTION ...] [--store DIR] [--insecure]
    veil launch --config C [--run MODULE:FUNCTION | --serve [--program ...]] [--insecure]
    veil share  --config C --model NAME --hf minilm|smollm2|gemma3|DIR      (the model owner)
    veil infer  --config C --model NAME --task embed|generate|logits --text T ...
    veil infer  --config C --program NAME --input NAME=FILE.pt ... --out FILE.pt
    veil gateway --config C --model NAME ... --tokenizer T [--port P]   (OpenAI-compatible API)
    veil demo   [demo options]          (see ``veil demo --help``)
    veil estimate --model minilm|smollm2|gpt2|bert --seq N [--new-tokens K] [--batch B]

``party`` runs one compute party: it connects to its peers over mutual TLS, agrees
PRG keys, runs an SPMD program ``fn(party)`` (default: the cluster health check in
:mod:`veil.parties.health`), prints its result and exits.  ``serve`` runs a party that
serves inference programs (:mod:`veil.parties.service`) to clients until stopped.
Serving parties always offer the model programs of :mod:`veil.parties.models`; ``share``
secret-shares a ``transformers`` model to them once, under a name.  ``launch`` runs
all three parties on this machine, either way (serving parties are restarted after a
failure).  ``infer`` is the client: it tokenizes text locally, secret-shares the token
ids, asks for a model task and prints what it alone reconstructs; or, with
``--program``, it secret-shares tensors saved with ``torch.save``, runs a program on
them and saves the reconstructed outputs.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import io
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from veil.nn import estimate_cli
from veil.parties.cli_help import texts
from veil.parties.gateway import add_command as add_gateway_command

DEFAULT_PROGRAM = "veil.parties.health:check"
DEFAULT_BASE_PORT = 50051


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from veil.nn.demo import main as demo_main  # heavy (models): import only when asked

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

    certs = sub.add_parser(
        "certs", help="create a cluster CA, party and client certificates", **texts("certs")
    )
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
    certs.add_argument(
        "--owner",
        action="append",
        default=[],
        help="model owner name: may share and replace models (default: owner)",
    )
    certs.set_defaults(handler=_certs)

    for name, helptext, handler in (
        ("party", "run one compute party", _party),
        ("serve", "run one compute party serving inference programs", _serve),
        ("launch", "run all three parties on this machine", _launch),
    ):
        cmd = sub.add_parser(name, help=helptext, **texts(name))
        cmd.add_argument("--config", required=True, help="cluster config (.toml or .json)")
        if name in ("party", "serve"):
            cmd.add_argument("--rank", required=True, type=int, help="this party's rank: 0, 1 or 2")
        if name in ("party", "launch"):
            cmd.add_argument(
                "--run",
                default=DEFAULT_PROGRAM,
                metavar="MODULE:FUNCTION",
                help="SPMD program fn(party) to run",
            )
        if name == "launch":
            cmd.add_argument("--serve", action="store_true", help="run `veil serve` parties")
            cmd.add_argument(
                "--restarts",
                type=int,
                default=100,
                help="with --serve: restart the parties after a failure this many times",
            )
        if name in ("serve", "launch"):
            cmd.add_argument(
                "--program",
                action="append",
                default=[],
                metavar="NAME=MODULE:FUNCTION",
                help="a program fn(party, inputs, options) -> outputs to serve as NAME "
                "(besides the built-in model programs)",
            )
            cmd.add_argument(
                "--queue-size",
                type=int,
                default=16,
                help="requests waiting at a party before new ones are refused",
            )
            cmd.add_argument(
                "--weight-budget-mib",
                type=int,
                help="memory for a request's weights, streamed from the store: the one in use "
                "plus those loaded ahead (MiB; 0: one weight at a time; default 3072)",
            )
        if name == "serve":
            cmd.add_argument(
                "--store",
                type=Path,
                help="this party's share store (default: <config dir>/store-party<rank>)",
            )
        cmd.add_argument("--device", default="cpu", help="torch device for the shares")
        cmd.add_argument(
            "--insecure",
            action="store_true",
            help="plaintext, unauthenticated links (local tests only)",
        )
        cmd.set_defaults(handler=handler)

    client_args = argparse.ArgumentParser(add_help=False)
    client_args.add_argument("--config", required=True, help="cluster config (.toml or .json)")
    client_args.add_argument(
        "--cert",
        type=Path,
        help="client certificate (default: <config dir>/<first client>.pem; "
        "for share, the first owner's)",
    )
    client_args.add_argument(
        "--key", type=Path, help="client key (default: <config dir>/<first client>.key)"
    )
    client_args.add_argument("--timeout", type=float, help="seconds a request may take in all")
    client_args.add_argument("--insecure", action="store_true", help="plaintext (local tests)")

    share = sub.add_parser(
        "share",
        parents=[client_args],
        help="model owner: secret-share a model to the parties",
        **texts("share"),
    )
    share.add_argument("--model", required=True, help="the name clients will use")
    share.add_argument(
        "--hf", required=True, help="minilm, smollm2, gemma3 (bundled) or a transformers model directory"
    )
    share.add_argument(
        "--part-mib",
        type=int,
        help="send the weights in requests of at most this much data per party (MiB; default 256)",
    )
    share.set_defaults(handler=_share)

    infer = sub.add_parser(
        "infer",
        parents=[client_args],
        help="private inference on a shared model or program",
        **texts("infer"),
    )
    target = infer.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="a model shared with `veil share`")
    target.add_argument("--program", help="name of a served program (tensor inputs)")
    infer.add_argument(
        "--task",
        choices=["embed", "generate", "logits"],
        default="embed",
        help="sentence embedding (BERT), greedy generation or raw logits (decoders)",
    )
    infer.add_argument("--text", action="append", default=[], help="input text (repeatable)")
    infer.add_argument("--ids", help="comma-separated token ids instead of --text")
    infer.add_argument(
        "--tokenizer", help="minilm, smollm2, gemma3 or a tokenizer directory (default: as --model)"
    )
    infer.add_argument(
        "--max-new-tokens", type=int, default=8, help="with --task generate: tokens to generate"
    )
    infer.add_argument(
        "--do-sample", action="store_true", help="with --task generate: sample instead of greedy"
    )
    infer.add_argument("--temperature", type=float, default=1.0, help="with --do-sample")
    infer.add_argument(
        "--top-k", type=int, default=None, help="with --do-sample: keep the k largest logits"
    )
    infer.add_argument(
        "--top-p", type=float, default=None, help="with --do-sample: nucleus probability mass"
    )
    infer.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    infer.add_argument(
        "--stop-at-eos",
        action="store_true",
        help="with --task generate: stop at the end-of-sequence token (the parties learn the "
        "output's length)",
    )
    infer.add_argument(
        "--stop",
        action="append",
        default=[],
        help="with --task generate: stop at this text (repeatable; the parties learn the length)",
    )
    infer.add_argument(
        "--input", action="append", default=[], metavar="NAME=FILE.pt", help="a torch.save'd tensor"
    )
    infer.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --program: a program option (repeatable)",
    )
    infer.add_argument("--out", type=Path, help="torch.save the outputs (a dict) here")
    infer.set_defaults(handler=_infer)

    add_gateway_command(sub, [client_args])
    sub.add_parser("demo", help="MiniLM / SmolLM2 demo (see veil demo --help)")
    estimate = sub.add_parser("estimate", help="a request's cost from a dry run", **texts("estimate"))
    estimate_cli.add_arguments(estimate)
    estimate.set_defaults(handler=estimate_cli.run)
    return parser


def _certs(args: argparse.Namespace) -> int:
    from veil.parties.certs import cluster_config_toml, write_cluster_certs
    from veil.parties.config import ConfigError, parse_address

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
    owners = tuple(args.owner) or ("owner",)
    write_cluster_certs(
        args.out,
        hosts=tuple(dict.fromkeys(hosts + args.host)),
        party_names=names,
        client_names=clients,
        owner_names=owners,
    )
    config = args.out / "cluster.toml"
    config.write_text(cluster_config_toml(names, tuple(addresses), clients, owners))
    everyone = tuple(dict.fromkeys(names + clients + owners))
    print(f"wrote the CA, certificates for {', '.join(everyone)} and {config}")
    return 0


def _party(args: argparse.Namespace) -> int:
    from veil.mpc.communicator import PeerError
    from veil.mpc.fixedpoint import FixedPoint
    from veil.mpc.party import Party
    from veil.parties.config import ConfigError, load_config
    from veil.parties.grpc_comm import connect_party

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # explicitly: a background job starts with it ignored
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
    from veil.parties.config import ConfigError, load_config
    from veil.parties.launch import launch

    try:
        load_config(args.config, insecure=True if args.insecure else None)  # fail before forking
    except ConfigError as exc:
        print(f"veil launch: {exc}", file=sys.stderr)
        return 2
    if args.serve:
        extra = [f"--program={spec}" for spec in args.program]
        extra += ["--queue-size", str(args.queue_size)]
        if args.weight_budget_mib is not None:
            extra += ["--weight-budget-mib", str(args.weight_budget_mib)]
    else:
        extra = ["--run", args.run]
    extra += ["--device", args.device] + (["--insecure"] if args.insecure else [])
    return launch(
        args.config,
        extra,
        command="serve" if args.serve else "party",
        restarts=args.restarts if args.serve else 0,
    )


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` makes a party print every thread's stack on stderr (a party that
    computes while its peers wait, found in the field).  Not where stderr is no file."""
    try:
        faulthandler.register(signal.SIGUSR1)
    except (io.UnsupportedOperation, ValueError, AttributeError):
        pass


def _serve(args: argparse.Namespace) -> int:
    from veil.mpc.communicator import PeerError
    from veil.nn.streamed import DEFAULT_BUDGET_BYTES
    from veil.parties.config import ConfigError, load_config
    from veil.parties.durable import DurableModelStore
    from veil.parties.models import check_request, model_programs
    from veil.parties.service import RequestLog, start_serving
    from veil.parties.store import ShareStore, StoreError
    from veil.parties.validation import validate_request

    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _stacks_on_sigusr1()
    try:
        config = load_config(args.config, insecure=True if args.insecure else None)
        spec = config.party(args.rank)
        root = args.store or Path(args.config).parent / f"store-party{args.rank}"
        mib = args.weight_budget_mib
        budget = DEFAULT_BUDGET_BYTES if mib is None else mib << 20
        if budget < 0:
            raise ValueError("--weight-budget-mib must be 0 (one weight at a time) or more")
        store = DurableModelStore(ShareStore(root), budget_bytes=budget)
        restored = store.restore()
        programs = model_programs(store) | dict(_named_program(e) for e in args.program)
        if args.queue_size < 1:
            raise ValueError("--queue-size must be at least 1")
    except (ConfigError, ValueError, TypeError, OSError, StoreError) as exc:
        print(f"veil serve: {exc}", file=sys.stderr)
        return 2
    if restored:
        _report(f"party {args.rank}: reloaded {', '.join(restored)} from {root}")

    def log(entry: RequestLog) -> None:
        t = entry.traffic
        _report(
            f"party {args.rank}: request {entry.request_id[:8]} {entry.program} "
            f"{'ok' if entry.ok else 'refused/failed'} in {entry.wall_s:.3f} s: sent "
            f"{t.bytes_sent} B in {t.messages_sent} messages, {t.rounds} rounds, "
            f"depth {t.depth}; "
            f"wire {entry.wire_bytes_sent} B; received {entry.input_bytes} B of inputs"
        )

    try:
        service, party = start_serving(
            config,
            args.rank,
            programs,
            device=args.device,
            check=lambda program, options: check_request(store, program, options),
            model_owner=store.owner,
            session_owner=store.sessions.owner,
            validate=lambda program, options, inputs: validate_request(
                store, program, options, inputs
            ),
            queue_size=args.queue_size,
            on_request=log,
            on_event=_report,
        )
    except (PeerError, ConfigError) as exc:
        print(f"party {args.rank}: {exc}", file=sys.stderr)
        return 1
    _report(f"party {args.rank}: serving {', '.join(sorted(programs))} at {spec.address}")
    comm = party.comm
    while not (stopping.is_set() or service.stopped.is_set()):
        stopping.wait(0.2)
    if service.failed is not None and not stopping.is_set():
        print(f"party {args.rank}: stopped: {service.failed}", file=sys.stderr)
        service.stop(str(service.failed))
        comm.abort(str(service.failed))
        return 1
    service.stop("the party is shutting down")
    comm.close()
    return 0


def _client_files(args: argparse.Namespace, config, owner: bool = False) -> tuple[Path, Path]:
    """--cert/--key, else the first client's files (the first owner's for ``owner``)."""
    base = Path(args.config).parent
    name = (config.owners if owner and config.owners else config.clients)[0]
    cert = args.cert or base / f"{name}.pem"
    key = args.key or base / f"{name}.key"
    return cert, key


def _share(args: argparse.Namespace) -> int:
    from veil.nn.lazy_import import LazyCheckpoint, has_checkpoint
    from veil.parties.cli_errors import explain
    from veil.parties.cli_inputs import load_hf
    from veil.parties.client import InferenceError, VeilClient
    from veil.parties.config import ConfigError, load_config

    try:
        config = load_config(args.config, insecure=True if args.insecure else None)
        if has_checkpoint(args.hf):  # read layer by layer: the owner never holds the model
            hf_model = LazyCheckpoint(args.hf)
            params, family = hf_model.parameter_count, hf_model.family
            print(f"reading {args.hf} one layer at a time ({len(hf_model.groups())} groups)")
        else:
            hf_model, _ = load_hf(args.hf, tokenizer=False)
            params, family = sum(p.numel() for p in hf_model.parameters()), type(hf_model).__name__
    except (ConfigError, ValueError, OSError) as exc:
        print(f"veil share: {exc}", file=sys.stderr)
        return 2
    try:
        files = _client_files(args, config, owner=True)
        with VeilClient(config, *files, run_timeout=args.timeout) as client:
            count = client.share_model(
                args.model,
                hf_model,
                show_progress=True,
                part_bytes=None if args.part_mib is None else args.part_mib << 20,
            )
            cost = client.last_cost
    except (InferenceError, ConfigError) as exc:
        print(f"veil share: {explain(exc, config, args.config)}", file=sys.stderr)
        return 1
    print(f"shared {family} {args.model!r}: {count} weights, {params:,} parameters")
    print(f"share: {cost.summary()}")
    return 0


def _infer(args: argparse.Namespace) -> int:
    import torch

    from veil.parties.cli_errors import explain
    from veil.parties.cli_inputs import load_hf, load_tensor, parse_ids
    from veil.parties.client import InferenceClient, InferenceError, VeilClient
    from veil.parties.config import ConfigError, load_config

    try:
        config = load_config(args.config, insecure=True if args.insecure else None)
        cert, key = _client_files(args, config)
        if args.program:
            inputs = {name: load_tensor(name, path) for name, path in _pairs(args.input)}
            options = dict(_pairs(args.option))
        else:
            tokenizer = None
            ids = None if args.ids is None else parse_ids(args.ids)
            if args.ids is None:
                if not args.text:
                    raise ValueError("give --text (or --ids)")
                print("loading the tokenizer ...", file=sys.stderr, flush=True)
                _, tokenizer = load_hf(args.tokenizer or args.model, model=False)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"veil infer: {exc}", file=sys.stderr)
        return 2
    try:
        print("running the request at the three parties ...", file=sys.stderr, flush=True)
        if args.program:
            with InferenceClient(config, cert=cert, key=key, run_timeout=args.timeout) as client:
                outputs = client.infer(args.program, inputs, options)
                cost = client.last_cost
        else:
            with VeilClient(config, cert, key, run_timeout=args.timeout) as client:
                outputs = _model_task(client, args, tokenizer, ids)
                cost = client.last_cost
    except ValueError as exc:  # refused by the client's checks, before anything was shared
        print(f"veil infer: {exc}", file=sys.stderr)
        return 2
    except (InferenceError, ConfigError) as exc:
        print(f"veil infer: {explain(exc, config, args.config)}", file=sys.stderr)
        return 1
    if args.out is not None:
        torch.save(outputs, args.out)
        print(f"wrote {', '.join(outputs)} to {args.out}")
    elif args.program:
        for name, value in outputs.items():
            print(f"{name}: {value.tolist()}")
    if cost is not None:
        print(f"request: {cost.summary()}")
    return 0


def _model_task(client, args: argparse.Namespace, tokenizer, ids) -> dict:
    """Tokenize here, run the task privately, print what only this client learns."""
    import torch

    if ids is not None:
        mask = torch.ones_like(ids)
        types = None
    else:
        enc = tokenizer(args.text, padding=True, return_tensors="pt")
        ids, mask, types = enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")
    if args.task == "embed":
        from veil.nn.bert import normalize

        embedding = normalize(client.embed(args.model, ids, mask, types).float())
        for i, row in enumerate(embedding):
            print(f"embedding {i}: dim {row.numel()}, first values {row[:4].tolist()}")
        if len(embedding) > 1:
            print(f"cosine similarities to the first: {(embedding[1:] @ embedding[0]).tolist()}")
        return {"embedding": embedding}
    if args.task == "logits":
        logits = client.logits(args.model, ids)
        print(
            f"logits: shape {tuple(logits.shape)}, argmax of the last position "
            f"{logits[..., -1, :].argmax(-1).tolist()}"
        )
        return {"logits": logits}
    if args.chat and tokenizer is not None:
        from veil.nn.demo import chat_ids

        ids = chat_ids(tokenizer, args.text[0])
    from veil.parties.cli_generate import stream_generation

    tokens = stream_generation(client, args, tokenizer, ids)
    print(f"generated ids: {tokens.tolist()}")
    if tokenizer is not None:
        for row in tokens.tolist():
            print(f"generated text: {tokenizer.decode(row)!r}")
    return {"tokens": tokens}


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
