"""Every fenced code block of README.md runs as written.

What is left out, by one rule: the blocks under "## Quick start" are the install commands
and the whole test run, which CI runs itself (``test_only_the_quick_start_is_left_out``
checks that nothing else is left out).  Python blocks run in a fresh interpreter; bash
blocks under ``bash -euo pipefail``; both from a temporary directory.  A block that uses
the deployed cluster (it names ``cluster/cluster.toml``) runs where ``veil certs`` made
that directory, with three ``veil launch --serve`` parties on free loopback ports and the
bundled MiniLM shared as ``minilm``.  A block that loads a real model is marked slow.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.parties.test_cli import free_ports

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LEFT_OUT_SECTION = "Quick start"
CLUSTER_CONFIG = "cluster/cluster.toml"
BLOCK_TIMEOUT_S = 600
CLUSTER_START_S = 180
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[str, str, str]]:
    """(section, language, code) of every fenced block, in order, dedented."""
    text = README.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.MULTILINE)
        section = headings[-1] if headings else ""
        blocks.append((section, match.group(2), textwrap.dedent(match.group(3))))
    return blocks


def _runnable() -> list:
    params = []
    for index, (section, language, code) in enumerate(readme_blocks()):
        if section == LEFT_OUT_SECTION:
            continue
        marks = [pytest.mark.slow] if "from_pretrained" in code else []
        params.append(pytest.param(language, code, id=f"{index}-{section}", marks=marks))
    return params


def test_only_the_quick_start_is_left_out() -> None:
    left_out = [code for section, _, code in readme_blocks() if section == LEFT_OUT_SECTION]
    assert left_out, "the Quick start has no code block: update this test's rule"
    for code in left_out:
        commands = [line for line in code.splitlines() if line and not line.startswith("#")]
        assert all(line.startswith("pip install") for line in commands), commands
    languages = {language for _, language, _ in readme_blocks()}
    assert languages <= {"bash", "python"}, languages


def test_python_code_is_fenced() -> None:
    """Python shown as an indented block would escape this test: every snippet is fenced."""
    outside = FENCE.sub("", README.read_text())
    stray = re.findall(r"^ {4,}(?:from \w+ import|import \w+).*$", outside, re.MULTILINE)
    assert not stray, stray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A deployed cluster in ``<dir>/cluster`` with MiniLM shared as ``minilm``."""
    from veil.parties.cli import main

    directory = tmp_path_factory.mktemp("readme")
    addresses = [f"--address=localhost:{port}" for port in free_ports(3)]
    clients = ["--client=alice", "--client=owner"]
    assert main(["certs", "--out", str(directory / "cluster"), *addresses, *clients]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "veil.parties.cli", "launch", "--config", CLUSTER_CONFIG, "--serve"],
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    owner = ["--cert", "cluster/owner.pem", "--key", "cluster/owner.key"]
    share = ["share", "--config", CLUSTER_CONFIG, *owner, "--model", "minilm", "--hf", "minilm"]
    deadline = time.monotonic() + CLUSTER_START_S
    try:
        while subprocess.run(
            [sys.executable, "-m", "veil.parties.cli", *share], check=False, cwd=directory, env=env
        ).returncode:
            assert time.monotonic() < deadline, "the parties did not start"
            assert launcher.poll() is None
            time.sleep(1)
        yield directory
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=60)


@pytest.mark.parametrize(("language", "code"), _runnable())
def test_readme_block_runs_as_written(language, code, tmp_path, request) -> None:
    cwd = request.getfixturevalue("cluster") if CLUSTER_CONFIG in code else tmp_path
    command = (
        [sys.executable, "-c", code]
        if language == "python"
        else ["bash", "-euo", "pipefail", "-c", code]
    )
    done = subprocess.run(
        command,
        check=False,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
