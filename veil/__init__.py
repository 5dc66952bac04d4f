"""Veil: three-party secure inference of transformers (PUMA's recipe over Z_2^64).

The only top-level name Veil installs is ``veil``; its parts are subpackages:

- :mod:`veil.mpc`: secret-shared tensors, fixed point, the PRG, the communicator, ``simulate``.
- :mod:`veil.protocols`: ABY3 building blocks and PUMA's approximations (``approx``).
- :mod:`veil.nn`: BERT, GPT-2 and LLaMA-family models on one code path; ``PrivateModel``.
- :mod:`veil.parties`, :mod:`veil.proto`: the gRPC deployment, its client and wire format.

The names most programs need are importable from here (loaded on first use, so that
``import veil`` stays cheap and pulls in neither transformers nor grpc)::

    from veil import PrivateModel, simulate, share, VeilClient, load_config
"""

from __future__ import annotations

import importlib
from pathlib import Path

__version__ = "0.1.0"

# In a source checkout the subpackages sit beside this folder (the repository keeps mpc/,
# nn/, ... at its top level); an installed wheel has them inside it.  Extending __path__
# makes ``veil.mpc`` resolve the same way in both, without any top-level ``mpc`` module.
_HERE = Path(__file__).resolve().parent
_SUBPACKAGES = ("mpc", "protocols", "nn", "parties", "proto")
if not (_HERE / "mpc").is_dir() and (_HERE.parent / "mpc" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))

_EXPORTS = {
    "ArithShare": "veil.mpc",
    "BoolShare": "veil.mpc",
    "Party": "veil.mpc",
    "deal": "veil.mpc",
    "reconstruct": "veil.mpc",
    "reveal": "veil.mpc",
    "share": "veil.mpc",
    "simulate": "veil.mpc",
    "PrivateModel": "veil.nn.private",
    "PrivateResult": "veil.nn.private",
    "estimate": "veil.nn.estimate",
    "normalize": "veil.nn.bert",
    "VeilClient": "veil.parties.client",
    "load_config": "veil.parties.config",
    "ClusterConfig": "veil.parties.config",
}

__all__ = [
    "ArithShare",
    "BoolShare",
    "ClusterConfig",
    "Party",
    "PrivateModel",
    "PrivateResult",
    "VeilClient",
    "deal",
    "estimate",
    "load_config",
    "normalize",
    "reconstruct",
    "reveal",
    "share",
    "simulate",
]


def __getattr__(name: str):
    """Import an exported name (PEP 562) from its module the first time it is asked for."""
    module = _EXPORTS.get(name)
    if module is None:
        if name in _SUBPACKAGES:
            return importlib.import_module(f"veil.{name}")
        raise AttributeError(f"module 'veil' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
