"""One party's weight shares on disk, so that a restarted party loses nothing.

Each party has its own store directory (mode 0o700, files 0o600).  A model lives in a
directory of its own: ``manifest.json`` with the model's public metadata (whatever the
serving layer keeps: family, config, headroom bits, ...) and each parameter's shape,
fractional bits and where its two components are.  A parameter is stored either

- as its pair: one ``.npy`` file of raw int64 (2, ...) (:meth:`ModelWriter.put`), or
- seed-compressed, as it was dealt (:mod:`veil.mpc.seeded`, :meth:`ModelWriter.put_payload`):
  a seeded component is its 16-byte AES key (in the manifest, which is why the manifest
  is owner-only key material), a data component one int64 ``.npy`` file.  Party 0 stores
  32 bytes per weight, parties 1 and 2 eight bytes per element: half the pair form.

Files are memory-mapped, so a reader can take one parameter at a time
(:class:`StoredModel`, what a party streaming a model larger than memory reads from).

Writing is all or nothing: :meth:`ShareStore.begin_model` returns a writer that fills
a hidden temporary directory; :meth:`ModelWriter.commit` renames it into place in one
step, so a crash mid-share never leaves half a model.  Committed directories carry a
commit counter; when a crash leaves an old and a new version of one model, the newer
wins and the older is removed at the next start.

What a store holds is two of the three additive components of every weight, each
uniformly random on its own: one party's store alone reveals nothing about the model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.mpc.prg import AesPrg
from veil.mpc.seeded import Payload

_MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"
_DIR_MODE = 0o700
_FILE_MODE = 0o600


class StoreError(RuntimeError):
    """The store is missing a model or parameter, or a file in it is damaged."""


class ModelWriter:
    """Writes one model's shares; nothing is visible until :meth:`commit`."""

    def __init__(self, store: ShareStore, name: str, meta: dict[str, Any]):
        self._store = store
        self._name = name
        self._meta = dict(meta)
        self._params: dict[str, dict[str, Any]] = {}
        self._dir = store.root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        self._dir.mkdir(mode=_DIR_MODE)

    def put(self, param: str, pair: torch.Tensor, frac_bits: int) -> None:
        """Write one parameter's pair (int64, shape (2, ...)) to its own file."""
        if pair.dtype != torch.int64 or pair.dim() < 1 or pair.shape[0] != 2:
            raise StoreError(f"share of {param!r} must be an int64 pair of shape (2, ...)")
        if param in self._params:
            raise StoreError(f"parameter {param!r} written twice for model {self._name!r}")
        filename = f"{len(self._params):06d}.npy"
        _write_array(self._dir / filename, pair)
        self._params[param] = {
            "file": filename,
            "shape": list(pair.shape[1:]),
            "frac_bits": int(frac_bits),
        }

    def put_payload(self, param: str, payload: Payload, shape: tuple[int, ...]) -> None:
        """Write one parameter as dealt seed-compressed: seeds inline, data components as files."""
        if param in self._params:
            raise StoreError(f"parameter {param!r} written twice for model {self._name!r}")
        parts = []
        for component, part in zip(payload.components, payload.parts, strict=True):
            if isinstance(part, bytes):
                parts.append({"component": component, "seed": part.hex()})
                continue
            if part.dtype != torch.int64 or tuple(part.shape) != tuple(shape):
                raise StoreError(f"component {component} of {param!r} must be int64 of shape {shape}")
            filename = f"{len(self._params):06d}-{component}.npy"
            _write_array(self._dir / filename, part)
            parts.append({"component": component, "file": filename})
        self._params[param] = {
            "shape": list(shape),
            "frac_bits": int(payload.frac_bits),
            "parts": parts,
        }

    def commit(self) -> None:
        """Make the model visible at once, replacing an older version of it."""
        manifest = {
            "name": self._name,
            "commit": time.time_ns(),
            "meta": self._meta,
            "params": self._params,
        }
        _write_private(self._dir / _MANIFEST, json.dumps(manifest).encode())
        final = self._store.root / f"m-{uuid.uuid4().hex}"
        os.rename(self._dir, final)
        _fsync_dir(self._store.root)
        self._store._drop_older(self._name, keep=final)

    def abandon(self) -> None:
        """Forget what was written (an upload that failed validation)."""
        shutil.rmtree(self._dir, ignore_errors=True)


class ShareStore:
    """The models one party has committed under ``root`` (created owner-only)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, _DIR_MODE)  # an existing directory may have looser rights
        for leftover in self.root.glob(f"{_TMP_PREFIX}*"):  # a share cut short by a crash
            shutil.rmtree(leftover, ignore_errors=True)
        for name in {m["name"] for m in self._manifests().values()}:
            self._drop_older(name, keep=self._latest(name))

    def begin_model(self, name: str, meta: dict[str, Any]) -> ModelWriter:
        """A writer for model ``name`` with its public ``meta`` (a JSON-serialisable dict)."""
        json.dumps(meta)  # fail now, not at commit, on metadata that cannot be stored
        return ModelWriter(self, name, meta)

    def models(self) -> list[str]:
        return sorted({m["name"] for m in self._manifests().values()})

    def meta(self, name: str) -> dict[str, Any]:
        return dict(self._manifest(name)["meta"])

    def params(self, name: str) -> list[str]:
        """The model's parameter names, in the order they were written."""
        return list(self._manifest(name)["params"])

    def load(self, name: str, param: str) -> tuple[torch.Tensor, int]:
        """(pair, frac_bits) of one parameter; a stored pair is memory-mapped (pages load on
        first use), a seed-compressed one expanded."""
        return self.reader(name).load(param)

    def reader(self, name: str) -> StoredModel:
        """Model ``name`` as committed now, read a parameter at a time."""
        directory = self._latest(name)
        return StoredModel(directory, json.loads((directory / _MANIFEST).read_text()))

    def delete(self, name: str) -> None:
        for directory, manifest in self._manifests().items():
            if manifest["name"] == name:
                shutil.rmtree(directory, ignore_errors=True)

    # -- internals -------------------------------------------------------------------
    def _manifests(self) -> dict[Path, dict[str, Any]]:
        found = {}
        for directory in self.root.glob("m-*"):
            try:
                found[directory] = json.loads((directory / _MANIFEST).read_text())
            except (OSError, ValueError) as exc:
                raise StoreError(f"damaged model directory {directory}: {exc}") from None
        return found

    def _latest(self, name: str) -> Path:
        versions = [(m["commit"], d) for d, m in self._manifests().items() if m["name"] == name]
        if not versions:
            raise StoreError(f"no model named {name!r} in {self.root}")
        return max(versions)[1]

    def _manifest(self, name: str) -> dict[str, Any]:
        return json.loads((self._latest(name) / _MANIFEST).read_text())

    def _drop_older(self, name: str, keep: Path) -> None:
        for directory, manifest in self._manifests().items():
            if manifest["name"] == name and directory != keep:
                shutil.rmtree(directory, ignore_errors=True)


class StoredModel:
    """One committed model of a store: its manifest read once, its parameters on demand."""

    def __init__(self, directory: Path, manifest: dict[str, Any]):
        self.directory = directory
        self.meta = dict(manifest["meta"])
        self._params: dict[str, dict[str, Any]] = manifest["params"]
        self.expand_s = 0.0
        """Seconds :meth:`load_pair` spent expanding seeds (AES-CTR)."""
        self.read_s = 0.0
        """Seconds :meth:`load_pair` spent copying data components from their files."""

    @property
    def params(self) -> list[str]:
        """Parameter names in the order they were written."""
        return list(self._params)

    def shape(self, param: str) -> tuple[int, ...]:
        return tuple(self._entry(param)["shape"])

    def frac_bits(self, param: str) -> int:
        return int(self._entry(param)["frac_bits"])

    def load(self, param: str) -> tuple[torch.Tensor, int]:
        """(pair, frac_bits); a stored pair is memory-mapped copy-on-write (a computation
        writing into it never changes the file), a seed-compressed one expanded."""
        entry = self._entry(param)
        if "parts" in entry:
            return self.load_pair(param), int(entry["frac_bits"])
        array = np.load(self.directory / entry["file"], mmap_mode="c")
        if array.dtype != np.int64 or list(array.shape) != [2, *entry["shape"]]:
            raise StoreError(f"{self.directory / entry['file']} does not hold {param!r} as written")
        return torch.from_numpy(array), entry["frac_bits"]

    def load_pair(self, param: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The (2, ...) int64 pair in memory, in ``out`` if given (an int64 buffer of as many
        elements, reused) or fresh: data components copied from their files, seeded ones
        expanded by AES-CTR into place."""
        entry = self._entry(param)
        pair = _pair_buffer(entry["shape"], out)
        if "parts" not in entry:
            pair.copy_(self.load(param)[0])
            return pair
        for slot, part in enumerate(entry["parts"]):
            start = time.perf_counter()
            if "seed" in part:
                AesPrg(bytes.fromhex(part["seed"])).fill_int64(pair[slot])
                self.expand_s += time.perf_counter() - start
                continue
            array = np.load(self.directory / part["file"], mmap_mode="r")
            if array.dtype != np.int64 or list(array.shape) != entry["shape"]:
                raise StoreError(f"{self.directory / part['file']} does not hold {param!r} as written")
            np.copyto(pair[slot].numpy(), array)
            del array  # unmap now: the pages leave this process's resident set
            self.read_s += time.perf_counter() - start
        return pair

    def _entry(self, param: str) -> dict[str, Any]:
        entry = self._params.get(param)
        if entry is None:
            raise StoreError(f"model in {self.directory} has no parameter {param!r}")
        return entry


def _pair_buffer(shape: list[int], out: torch.Tensor | None) -> torch.Tensor:
    size = 2 * int(np.prod(shape, dtype=np.int64))
    if out is None:
        return torch.empty((2, *shape), dtype=torch.int64)
    if out.dtype != torch.int64 or out.numel() != size or not out.is_contiguous():
        raise StoreError(f"a buffer for a pair of shape {shape} must be {size} contiguous int64")
    return out if list(out.shape) == [2, *shape] else out.view(2, *shape)


def _write_array(path: Path, tensor: torch.Tensor) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    with os.fdopen(fd, "wb") as sink:
        np.save(sink, tensor.detach().cpu().contiguous().numpy())
        sink.flush()
        os.fsync(sink.fileno())


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    with os.fdopen(fd, "wb") as sink:
        sink.write(data)
        sink.flush()
        os.fsync(sink.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
