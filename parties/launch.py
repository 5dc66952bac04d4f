"""``veil launch``: the three parties as local subprocesses, torn down together.

A deployment runs ``veil party`` once per host; on one machine the launcher does
it for you and makes sure nothing outlives it: when one party fails, on Ctrl-C,
on SIGTERM, or when the launcher itself dies (Linux parent-death signal), every
party process is stopped, so no orphan keeps a port bound.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from veil.mpc.communicator import WORLD_SIZE
from veil.parties.host_threads import shared_host_env

_POLL_SECONDS = 0.1
_STOP_GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM if the launcher disappears."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: Ctrl-C/SIGTERM handling still applies
        pass


class _Stopped(Exception):
    """The launcher got SIGINT or SIGTERM; ``code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped(signum)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""Both stop the launcher and its parties.  SIGINT gets an explicit handler because a shell
starts background jobs with SIGINT ignored, and Python then never installs its own."""


def party_command(config: str, rank: int, extra: list[str], command: str = "party") -> list[str]:
    return [
        sys.executable,
        "-m",
        "veil.parties.cli",
        command,
        "--config",
        config,
        "--rank",
        str(rank),
        *extra,
    ]


def launch(config: str, extra: list[str], command: str = "party", restarts: int = 0) -> int:
    """Run ``veil <command>`` for the three parties; 0 if all succeed, else the first failure's code.

    ``restarts`` > 0 (serving parties): a party that exits with an error is started
    again, up to that many times in all, while the others keep running (they relink to
    it).  The restarted party reloads its model shares from its store.
    """
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    procs: list[subprocess.Popen] = []

    def start(rank: int) -> subprocess.Popen:
        return subprocess.Popen(
            party_command(config, rank, extra, command),
            env=shared_host_env(),  # three parties, one host: a share of the cores each
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the launcher runs no threads
        )

    try:
        procs.extend(start(rank) for rank in range(WORLD_SIZE))
        while True:
            rank, code = _wait(procs)
            if code == 0 or restarts <= 0:
                if code != 0:
                    print("veil launch: stopping the others", file=sys.stderr)
                return code
            restarts -= 1
            print(
                f"veil launch: restarting party {rank} ({restarts} restarts left)", file=sys.stderr
            )
            procs[rank] = start(rank)
    except (_Stopped, KeyboardInterrupt) as exc:
        code = exc.code if isinstance(exc, _Stopped) else 128 + signal.SIGINT
        how = "interrupted" if code == 128 + signal.SIGINT else "terminated"
        print(f"veil launch: {how}, stopping the parties", file=sys.stderr)
        return code
    finally:
        _stop(procs)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait(procs: list[subprocess.Popen]) -> tuple[int, int]:
    """(rank, code) of the first party to fail, or (-1, 0) once all have succeeded."""
    while True:
        codes = [proc.poll() for proc in procs]
        for rank, code in enumerate(codes):
            if code not in (None, 0):
                print(f"veil launch: party {rank} exited with code {code}", file=sys.stderr)
                return rank, code
        if all(code == 0 for code in codes):
            return -1, 0
        time.sleep(_POLL_SECONDS)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM (parties abort their links and exit), then SIGKILL whatever lingers."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc; empty where it is not available)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def stop_launcher(proc: subprocess.Popen, grace: float = 20.0) -> list[int]:
    """Stop a ``veil launch`` process and its parties whatever state they are in.

    SIGINT (as Ctrl-C would), then SIGTERM, then SIGKILL, each after ``grace`` seconds
    without an exit; parties still alive after their launcher has gone are killed too.
    Returns the pids that had to be killed (empty when the launcher stopped them itself).
    """
    parties = child_pids(proc.pid)
    for signum in (signal.SIGINT, signal.SIGTERM):
        if proc.poll() is None:
            proc.send_signal(signum)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
    killed = []
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        killed.append(proc.pid)
    deadline = time.monotonic() + grace
    for pid in parties:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
