"""Run SPMD functions over real gRPC clusters on this machine (tests, benchmarks, demos).

Two flavours, both with real servers, real (m)TLS and real sockets on loopback:

- :class:`GrpcCluster`: three worker processes (``multiprocessing`` spawn), one per
  party, as in a deployment.  Functions and arguments must be picklable (module-level
  functions).
- :class:`GrpcThreads`: the three parties as threads of this process, each with its
  own :class:`GrpcCommunicator`.  Accepts closures and lambdas, so a test suite written
  against ``mpc.simulate`` runs over gRPC unchanged.

Both mirror ``mpc.simulate``: ``run(fn, *args, fxp=None, device="cpu", **kwargs)``
calls ``fn(party, *args, **kwargs)`` at every party with a fresh :class:`veil.mpc.Party`
(fresh counters, fresh PRG keys), returns the three results, and re-raises the root
cause if a party fails.  The links are kept across calls; after a failure they are
rebuilt before the next call.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import pickle
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from veil.mpc.communicator import WORLD_SIZE, PeerError
from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.party import Party
from veil.parties.certs import write_cluster_certs
from veil.parties.config import ClusterConfig, config_from_dict
from veil.parties.grpc_comm import GrpcCommunicator

if TYPE_CHECKING:
    from typing_extensions import Self


def local_config(
    directory: str | Path,
    *,
    insecure: bool = False,
    timeout: float = 30.0,
    connect_timeout: float = 10.0,
    frac_bits: int = 18,
) -> ClusterConfig:
    """A loopback cluster on OS-chosen ports, with fresh certificates in ``directory``."""
    if not insecure:
        write_cluster_certs(directory)
    raw = {
        "insecure": insecure,
        "timeout": timeout,
        "connect_timeout": connect_timeout,
        "frac_bits": frac_bits,
        "parties": [{"address": "localhost:0"} for _ in range(WORLD_SIZE)],
    }
    if not insecure:
        raw["ca"] = "ca.pem"
        raw["owners"] = ["owner"]
        for rank, entry in enumerate(raw["parties"]):
            entry.update(cert=f"party{rank}.pem", key=f"party{rank}.key")
    return config_from_dict(raw, base_dir=directory)


@dataclass
class Outcome:
    """What one party's call produced: a result, or an exception and its traceback."""

    rank: int
    result: Any = None
    error: BaseException | None = None
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def raise_root_cause(outcomes: list[Outcome]) -> list[Any]:
    """The results, or the first failure that is not a mere consequence of another's.

    A party that raised on its own outranks peers that only saw it go (PeerError).
    """
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return [o.result for o in outcomes]
    roots = [o for o in failed if not isinstance(o.error, PeerError)] or failed
    root = roots[0]
    assert root.error is not None
    if root.traceback:
        root.error.add_note(f"--- traceback at party {root.rank} ---\n{root.traceback}")
    raise root.error


def call_at_party(
    comm: GrpcCommunicator,
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    fxp: FixedPoint | None,
    device: torch.device | str,
) -> Outcome:
    """One party's side of ``run``; on failure, abort the links so peers fail fast."""
    try:
        comm.reset_counters()
        comm.device = torch.device(device)  # received tensors land where the shares live
        party = Party(comm, fxp=fxp or FixedPoint(comm.config.frac_bits), device=device)
        return Outcome(comm.rank, result=fn(party, *args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - reported to the caller of run()
        comm.abort(f"{type(exc).__name__}: {exc}")
        return Outcome(comm.rank, error=exc, traceback=traceback.format_exc())


# -- three threads -------------------------------------------------------------------


class _LocalCluster:
    """What both local clusters share: a config (a temporary one with fresh certificates
    when none is given), ``run`` on top of ``run_all``, and cleanup as a context manager."""

    def __init__(self, config: ClusterConfig | None, *, insecure: bool, timeout: float):
        self._tmp: tempfile.TemporaryDirectory | None = None
        if config is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="veil-grpc-")
            config = local_config(self._tmp.name, insecure=insecure, timeout=timeout)
        self.config = config

    def run_all(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Outcome]:
        raise NotImplementedError

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        fxp: FixedPoint | None = None,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> list[Any]:
        return raise_root_cause(self.run_all(fn, *args, fxp=fxp, device=device, **kwargs))

    def _stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the parties and remove temporary files."""
        self._stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GrpcThreads(_LocalCluster):
    """The three parties as threads of this process, talking gRPC over loopback."""

    def __init__(
        self, config: ClusterConfig | None = None, *, insecure: bool = False, timeout: float = 30.0
    ):
        super().__init__(config, insecure=insecure, timeout=timeout)
        self.comms: list[GrpcCommunicator] | None = None

    def run_all(
        self,
        fn: Callable[..., Any],
        *args: Any,
        fxp: FixedPoint | None = None,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> list[Outcome]:
        """Like :meth:`run`, but return every party's outcome instead of raising."""
        comms = self._connected()
        outcomes: list[Outcome] = [Outcome(rank) for rank in range(WORLD_SIZE)]

        def target(rank: int) -> None:
            outcomes[rank] = call_at_party(comms[rank], fn, args, kwargs, fxp, device)

        threads = [
            threading.Thread(target=target, args=(rank,), name=f"grpc-party{rank}")
            for rank in range(WORLD_SIZE)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if not all(o.ok for o in outcomes):
            self._disconnect()
        return outcomes

    def _stop(self) -> None:
        self._disconnect()

    def _connected(self) -> list[GrpcCommunicator]:
        if self.comms is None:
            comms = [GrpcCommunicator(rank, self.config) for rank in range(WORLD_SIZE)]
            bound = self.config.with_addresses([f"localhost:{c.port}" for c in comms])
            errors: list[BaseException] = []

            def connect(comm: GrpcCommunicator) -> None:
                try:
                    comm.connect(bound)
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)

            threads = [threading.Thread(target=connect, args=(c,)) for c in comms]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                for comm in comms:
                    comm.abort("cluster start failed")
                raise errors[0]
            self.comms = comms
        return self.comms

    def _disconnect(self) -> None:
        comms, self.comms = self.comms, None
        if comms:
            threads = [threading.Thread(target=c.close) for c in comms]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()


# -- three processes -----------------------------------------------------------------


def _worker(rank: int, config: ClusterConfig, pipe: multiprocessing.connection.Connection) -> None:
    """A party process: (re)builds its communicator and runs calls, as told by the parent."""
    comm: GrpcCommunicator | None = None
    while True:
        try:
            command, payload = pipe.recv()
        except EOFError:  # the parent went away: leave, do not linger as an orphan
            command, payload = "stop", None
        if command == "listen":
            if comm is not None:
                comm.abort("links are being rebuilt")
            comm = GrpcCommunicator(rank, config)
            pipe.send(comm.port)
        elif command == "connect":
            assert comm is not None
            try:
                comm.connect(payload)
                _reply(pipe, Outcome(rank))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                _reply(pipe, Outcome(rank, error=exc, traceback=traceback.format_exc()))
        elif command == "run":
            assert comm is not None
            fn, args, kwargs, fxp, device = payload
            _reply(pipe, call_at_party(comm, fn, args, kwargs, fxp, device))
        elif command == "stop":
            if comm is not None:
                comm.close()
            return


def _picklable(outcome: Outcome) -> Outcome:
    """An exception that does not survive pickling travels as a RuntimeError with its text."""
    if outcome.error is not None:
        try:
            pickle.loads(pickle.dumps(outcome.error))
        except Exception:  # noqa: BLE001 - any pickling failure
            error = RuntimeError(f"{type(outcome.error).__name__}: {outcome.error}")
            return Outcome(outcome.rank, error=error, traceback=outcome.traceback)
    return outcome


def _reply(pipe: multiprocessing.connection.Connection, outcome: Outcome) -> None:
    try:
        pipe.send(_picklable(outcome))
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        pipe.send(Outcome(outcome.rank, error=RuntimeError(f"result is not picklable: {exc}")))


class WorkerDied(PeerError):
    """A worker process exited while the parent was waiting on it."""


class GrpcCluster(_LocalCluster):
    """Three party processes on this machine; ``run`` ships a function to all of them.

    ``grace`` bounds how long the cluster waits for the remaining parties after one
    has failed before it kills them (a stalled party must not stall the caller).
    """

    def __init__(
        self,
        config: ClusterConfig | None = None,
        *,
        insecure: bool = False,
        timeout: float = 30.0,
        grace: float | None = None,
    ):
        super().__init__(config, insecure=insecure, timeout=timeout)
        self.grace = self.config.timeout + 5.0 if grace is None else grace
        self._context = multiprocessing.get_context("spawn")
        self._procs: list[Any] = [None] * WORLD_SIZE
        self._pipes: list[Any] = [None] * WORLD_SIZE
        self._linked = False

    @property
    def pids(self) -> list[int | None]:
        return [p.pid if p is not None else None for p in self._procs]

    def run_all(
        self,
        fn: Callable[..., Any],
        *args: Any,
        fxp: FixedPoint | None = None,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> list[Outcome]:
        """Like :meth:`run`, but return every party's outcome instead of raising."""
        self._link()
        for pipe in self._pipes:
            pipe.send(("run", (fn, args, kwargs, fxp, device)))
        outcomes = self._collect()
        if not all(o.ok for o in outcomes):
            self._linked = False
        return outcomes

    def _stop(self) -> None:
        """Stop the workers (politely, then by force)."""
        for rank, proc in enumerate(self._procs):
            if proc is not None and proc.is_alive():
                try:
                    self._pipes[rank].send(("stop", None))
                except OSError:
                    pass
        for proc in self._procs:
            if proc is not None:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        self._procs = [None] * WORLD_SIZE
        self._pipes = [None] * WORLD_SIZE
        self._linked = False

    def _link(self) -> None:
        """Start missing workers; (re)build the links unless they are known good."""
        if self._linked:
            return
        for rank in range(WORLD_SIZE):
            if self._procs[rank] is None or not self._procs[rank].is_alive():
                self._spawn(rank)
        for pipe in self._pipes:
            pipe.send(("listen", None))
        ports = [
            self._receive(rank, self.config.connect_timeout + 60) for rank in range(WORLD_SIZE)
        ]
        bound = self.config.with_addresses([f"localhost:{port}" for port in ports])
        for pipe in self._pipes:
            pipe.send(("connect", bound))
        raise_root_cause(self._collect())
        self._linked = True

    def _spawn(self, rank: int) -> None:
        parent_end, child_end = self._context.Pipe()
        proc = self._context.Process(
            target=_worker,
            args=(rank, self.config, child_end),
            name=f"veil-party{rank}",
            daemon=True,
        )
        proc.start()
        child_end.close()
        self._procs[rank], self._pipes[rank] = proc, parent_end

    def _receive(self, rank: int, timeout: float) -> Any:
        pipe, proc = self._pipes[rank], self._procs[rank]
        ready = multiprocessing.connection.wait([pipe, proc.sentinel], timeout=timeout)
        if pipe in ready:
            try:
                return pipe.recv()
            except EOFError:
                pass
        self._kill(rank)
        if not ready:
            raise PeerError(rank, f"worker did not answer within {timeout:g} s")
        raise WorkerDied(rank, f"worker process exited with code {proc.exitcode}")

    def _collect(self) -> list[Outcome]:
        """Every party's outcome; once one has failed, the rest get ``grace`` seconds."""
        outcomes: dict[int, Outcome] = {}
        deadline: float | None = None
        while len(outcomes) < WORLD_SIZE:
            waiting = [r for r in range(WORLD_SIZE) if r not in outcomes]
            handles = {self._pipes[r]: r for r in waiting} | {
                self._procs[r].sentinel: r for r in waiting
            }
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = multiprocessing.connection.wait(list(handles), timeout=timeout)
            if not ready:
                for rank in waiting:
                    self._kill(rank)
                    outcomes[rank] = Outcome(
                        rank,
                        error=PeerError(rank, f"still busy {self.grace:g} s after a peer failed"),
                    )
                break
            for handle in ready:
                rank = handles[handle]
                if rank in outcomes:
                    continue
                try:
                    outcomes[rank] = self._receive(rank, timeout=0)
                except PeerError as exc:
                    outcomes[rank] = Outcome(rank, error=exc)
                if not outcomes[rank].ok and deadline is None:
                    deadline = time.monotonic() + self.grace
        return [outcomes[rank] for rank in range(WORLD_SIZE)]

    def _kill(self, rank: int) -> None:
        proc = self._procs[rank]
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join()
        self._procs[rank] = None
        self._pipes[rank] = None
