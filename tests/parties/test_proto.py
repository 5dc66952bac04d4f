"""The committed generated code is exactly what ``python -m veil.proto.generate`` produces,
up to the generator's version stamp.

``GRPC_GENERATED_VERSION`` names the grpcio-tools release that ran protoc, and the generated
module refuses a grpcio older than it at import.  The committed stamp stays at the oldest
grpcio that pyproject allows (1.85.1), so that a newer grpcio-tools on the test machine is
no staleness; any other difference is.
"""

import re
from pathlib import Path

import pytest

from veil import proto
from veil.proto.generate import generate

pytest.importorskip("grpc_tools")


_VERSION_STAMP = re.compile(rb"^GRPC_GENERATED_VERSION = '[0-9.]+'$", re.MULTILINE)


def _unstamped(code: bytes) -> bytes:
    return _VERSION_STAMP.sub(b"GRPC_GENERATED_VERSION = ...", code)


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    committed = Path(proto.__file__).parent
    for path in generate(tmp_path):
        assert _unstamped(path.read_bytes()) == _unstamped((committed / path.name).read_bytes()), (
            f"{path.name} is stale: run `python -m veil.proto.generate` and commit the result"
        )


def test_committed_stamp_is_the_oldest_grpcio_allowed() -> None:
    committed = (Path(proto.__file__).parent / "veil_pb2_grpc.py").read_bytes()
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    oldest = re.search(r'"grpcio>=([0-9.]+)"', pyproject).group(1)
    assert f"GRPC_GENERATED_VERSION = '{oldest}'".encode() in committed


def test_grpc_module_imports_package_relative() -> None:
    from veil.proto import veil_pb2_grpc

    assert "from veil.proto import veil_pb2" in Path(veil_pb2_grpc.__file__).read_text()
