"""Regenerate the Python code for ``proto/veil.proto``.

Usage: ``python -m veil.proto.generate [OUT_DIR]`` (default: the ``proto`` package itself).

protoc writes ``import veil_pb2`` into the gRPC module, which only works when
``proto/`` is on ``sys.path``; we rewrite it to the package-relative
``from veil.proto import veil_pb2`` so the generated code imports like any other module.
The committed files must equal what this command produces (a test checks it).
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILE = PROTO_DIR / "veil.proto"
_ABSOLUTE_IMPORT = "import veil_pb2 as veil__pb2"
_PACKAGE_IMPORT = "from veil.proto import veil_pb2 as veil__pb2"


def generate(out_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc (from grpcio-tools) into ``out_dir``; return the files written."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_FILE}")
    grpc_module = out_dir / "veil_pb2_grpc.py"
    source = grpc_module.read_text()
    if _ABSOLUTE_IMPORT not in source:
        raise RuntimeError("protoc output changed: cannot find the veil_pb2 import to rewrite")
    grpc_module.write_text(source.replace(_ABSOLUTE_IMPORT, _PACKAGE_IMPORT))
    return [out_dir / "veil_pb2.py", grpc_module]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out_dir = Path(argv[0]) if argv else PROTO_DIR
    for path in generate(out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
