"""``veil certs`` and ``veil launch``: three real party processes, started and torn down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from veil.parties.cli import main
from veil.parties.config import load_config
from veil.parties.launch import stop_launcher

REPO = Path(__file__).resolve().parents[2]
PID_DIR_ENV = "VEIL_TEST_PID_DIR"


def _record_pid(party) -> None:
    Path(os.environ[PID_DIR_ENV], str(party.rank)).write_text(str(os.getpid()))


def fail_at_rank_1(party) -> None:
    """Party 1 fails once all are up; the others would sleep for a minute."""
    _record_pid(party)
    if party.rank == 1:
        time.sleep(0.5)
        raise RuntimeError("party 1 gives up")
    time.sleep(60)


def sleep_long(party) -> None:
    _record_pid(party)
    time.sleep(60)


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def cluster_dir(tmp_path) -> Path:
    addresses = [f"--address=localhost:{port}" for port in free_ports(3)]
    assert main(["certs", "--out", str(tmp_path), *addresses]) == 0
    return tmp_path


def veil(*args: str, env_extra: dict | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "veil.parties.cli", *args], env=env, cwd=REPO, **kwargs
    )


def assert_gone(pid_dir: Path) -> None:
    pids = [int(p.read_text()) for p in pid_dir.iterdir()]
    assert len(pids) == 3
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def assert_ports_free(config_path: Path) -> None:
    """A new server can listen on every party's port (as gRPC does, with SO_REUSEADDR)."""
    for spec in load_config(config_path).parties:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", spec.port))
            s.listen()


def test_certs_writes_a_loadable_config(cluster_dir) -> None:
    config = load_config(cluster_dir / "cluster.toml")
    assert not config.insecure and config.ca == cluster_dir / "ca.pem"
    assert [spec.name for spec in config.parties] == ["party0", "party1", "party2"]


@pytest.mark.slow  # launch start-up and teardown are covered quickly by test_service.py
def test_launch_runs_health_check(cluster_dir) -> None:
    proc = veil(
        "launch", "--config", str(cluster_dir / "cluster.toml"), stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert sorted(line.split(":")[0] for line in out.splitlines()) == [
        "party 0",
        "party 1",
        "party 2",
    ]
    assert out.count("health check ok") == 3
    assert_ports_free(cluster_dir / "cluster.toml")


def test_launch_tears_down_when_one_party_fails(cluster_dir, tmp_path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    start = time.monotonic()
    proc = veil(
        "launch",
        "--config",
        str(cluster_dir / "cluster.toml"),
        "--run",
        "tests.parties.test_cli:fail_at_rank_1",
        env_extra={PID_DIR_ENV: str(pid_dir)},
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "party 1 gives up" in err and "stopping the others" in err
    assert time.monotonic() - start < 30  # not the parties' 60 s sleep
    assert_gone(pid_dir)
    assert_ports_free(cluster_dir / "cluster.toml")


@pytest.mark.slow  # Ctrl-C teardown is also covered by test_service.py
def test_launch_interrupted(cluster_dir, tmp_path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    proc = veil(
        "launch",
        "--config",
        str(cluster_dir / "cluster.toml"),
        "--run",
        "tests.parties.test_cli:sleep_long",
        env_extra={PID_DIR_ENV: str(pid_dir)},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(list(pid_dir.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the launcher
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err
    assert_gone(pid_dir)
    assert_ports_free(cluster_dir / "cluster.toml")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job


def test_launch_from_a_background_job_stops_on_sigint(cluster_dir, tmp_path) -> None:
    """Started with SIGINT ignored (``veil launch ... &`` in a script), Ctrl-C still stops it."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    proc = veil(
        "launch",
        "--config",
        str(cluster_dir / "cluster.toml"),
        "--run",
        "tests.parties.test_cli:sleep_long",
        env_extra={PID_DIR_ENV: str(pid_dir)},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(pid_dir.iterdir())) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        killed = stop_launcher(proc)
    assert killed == [], f"had to kill {killed}: SIGINT did not stop the launcher"
    assert proc.returncode == 130 and "interrupted" in err
    assert_gone(pid_dir)
    assert_ports_free(cluster_dir / "cluster.toml")


def test_party_reports_config_errors(cluster_dir, capsys) -> None:
    assert main(["party", "--config", str(cluster_dir / "cluster.toml"), "--rank", "5"]) == 2
    assert "unknown party rank 5" in capsys.readouterr().err
    assert main(["launch", "--config", str(cluster_dir / "missing.toml")]) == 2


def test_demo_is_delegated_to_nn(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    assert "usage: veil demo" in capsys.readouterr().out
