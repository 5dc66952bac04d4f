"""The committed generated code is exactly what ``python -m veil.proto.generate`` produces."""

from pathlib import Path

import pytest

from veil import proto
from veil.proto.generate import generate

pytest.importorskip("grpc_tools")


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    committed = Path(proto.__file__).parent
    for path in generate(tmp_path):
        assert path.read_bytes() == (committed / path.name).read_bytes(), (
            f"{path.name} is stale: run `python -m veil.proto.generate` and commit the result"
        )


def test_grpc_module_imports_package_relative() -> None:
    from veil.proto import veil_pb2_grpc

    assert "from veil.proto import veil_pb2" in Path(veil_pb2_grpc.__file__).read_text()
