"""Veil installs one top-level name, ``veil``, and lives beside proto-plus (``proto``).

The repository keeps mpc/, protocols/, nn/, parties/ and proto/ at its top level; they must
install as ``veil.mpc`` ... ``veil.proto`` only.  ``proto`` is proto-plus's import name and
``mpc``, ``nn`` and ``parties`` are other projects' too, so none of them may appear as a
top-level module once Veil is imported, whether Veil is installed editable (the test run)
or from its wheel (checked in a new virtual environment beside proto-plus).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOREIGN_NAMES = ("mpc", "protocols", "nn", "parties", "proto")

# Imports every part of Veil (the public API and each subpackage's heaviest module), then
# prints the foreign top-level names found in sys.modules and where veil.proto came from.
_PROBE = """
import sys
import veil
from veil import PrivateModel, simulate, share, VeilClient, load_config
import veil.nn.demo, veil.parties.cli, veil.parties.service, veil.protocols.approx.softmax
import veil.proto.veil_pb2_grpc
foreign = sorted(n for n in {names!r} if n in sys.modules)
print("foreign:", ",".join(foreign))
print("veil.proto:", veil.proto.__file__)
import proto
print("proto.Message:", hasattr(proto, "Message"), proto.__file__)
"""


def _probe(python: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    out = subprocess.run(
        [python, "-c", _PROBE.format(names=FOREIGN_NAMES)],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return dict(line.split(": ", 1) for line in out.stdout.splitlines())


def test_importing_veil_adds_no_foreign_top_level_module(tmp_path) -> None:
    """In the test environment (editable install), run from outside the repository."""
    found = _probe(sys.executable, tmp_path)
    assert found["foreign"] == ""
    assert Path(found["veil.proto"]).parent == REPO / "proto"
    assert found["proto.Message"].startswith("True")  # proto-plus, installed by the test extra


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True,
        timeout=600,
    )
    (path,) = out.glob("veil-*.whl")
    return path


def test_wheel_holds_nothing_outside_veil(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = "-".join(wheel.name.split("-")[:2]) + ".dist-info"
    assert {name.split("/", 1)[0] for name in names} == {"veil", dist_info}
    for sub in FOREIGN_NAMES:
        assert f"veil/{sub}/__init__.py" in names
    assert "veil/proto/veil.proto" in names


def test_wheel_installs_beside_proto_plus(wheel: Path, tmp_path) -> None:
    """A new venv holding Veil's wheel and proto-plus; the heavy dependencies (torch, grpc,
    transformers) come from the test environment through a .pth line, which adds that
    directory without running its .pth files, so the editable Veil there stays invisible."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "-q",
            "--no-deps",
            str(wheel),
            "proto-plus",
        ],
        check=True,
        timeout=600,
    )
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "_veil_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = _probe(python, tmp_path, env)
    assert found["foreign"] == ""
    assert Path(found["veil.proto"]).is_relative_to(site / "veil" / "proto")
    has_message, proto_file = found["proto.Message"].split(" ", 1)
    assert has_message == "True" and Path(proto_file).is_relative_to(site)
