"""Import a ``transformers`` checkpoint one layer at a time, for models larger than memory.

``transformers`` loads a model whole, so the model owner of a 7B model would need ~27 GB
for the float32 weights alone before dealing a single share.  :class:`LazyCheckpoint`
instead builds the model's *skeleton* from its config with every parameter on PyTorch's
``meta`` device (shapes, no data; buffers such as RoPE tables stay real), imports it with
the family's ordinary ``from_hf`` (meta in, meta out), and then, per group of
checkpoint tensors (everything outside the layers, then each layer), reads that group from
disk, imports again and keeps exactly the weights that came out real.  Those depend only
on the group's tensors; the rest of the import runs on meta tensors at no cost.  The
group's tensors go back to meta before the next group is read, so the owner holds one
layer (plus the weights imported from it) at a time.

The weights are bit for bit those of ``import_hf(from_pretrained(directory))`` in float32
(``tests/nn/test_lazy_import.py`` checks every family).  A weight built from tensors of
two groups would never come out real; it is reported as missing rather than sent wrong.

Formats: ``*.safetensors`` (one file or shards with an index), read tensor by tensor
through ``safetensors.safe_open``, and ``pytorch_model*.bin`` opened with
``torch.load(mmap=True)``.  GGUF files are quantised as a whole and stay on the eager path.
Cost: one meta import per group (no tensor data), one read of every checkpoint tensor.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from veil.nn.private import import_hf

_LAYER = re.compile(r"\.(\d+)\.")


def has_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds weights :class:`LazyCheckpoint` can read tensor by tensor."""
    path = Path(directory)
    return path.is_dir() and bool(_weight_files(path))


def _weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))


class _TensorFiles:
    """The tensors of a checkpoint directory by name, each read only when asked for.

    A file is opened (memory-mapped) for one read and closed after it: a map kept open
    would keep every page read so far in the process's resident set.
    """

    def __init__(self, directory: Path):
        files = _weight_files(directory)
        if not files:
            raise ValueError(f"{directory} has no *.safetensors or pytorch_model*.bin weights")
        self._safetensors = files[0].suffix == ".safetensors"
        self._file: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            with self._open(file) as tensors:
                names = list(tensors.keys())  # a safetensors reader is not iterable
                for key in names:
                    self._file[key] = file
                    self._shapes[key] = self._shape(tensors, key)

    @contextlib.contextmanager
    def _open(self, file: Path) -> Iterator[Any]:
        if self._safetensors:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as tensors:
                yield tensors
        else:
            yield torch.load(file, map_location="cpu", mmap=True, weights_only=True)

    def _shape(self, tensors: Any, key: str) -> tuple[int, ...]:
        if self._safetensors:
            return tuple(tensors.get_slice(key).get_shape())
        return tuple(tensors[key].shape)

    def keys(self) -> set[str]:
        return set(self._file)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def read(self, key: str) -> torch.Tensor:
        """The tensor in float32, in memory of its own (never a view of the memory map)."""
        with self._open(self._file[key]) as tensors:
            tensor = tensors.get_tensor(key) if self._safetensors else tensors[key]
            return tensor.to(torch.float32, copy=True)


class _AbsentUsed(Exception):
    """The import touched a parameter the checkpoint lacks (the message is its name)."""


class _Absent(torch.Tensor):
    """A meta tensor standing for a parameter the checkpoint lacks: any use raises."""

    absent_name = ""

    @classmethod
    def named(cls, name: str, like: torch.Tensor) -> _Absent:
        absent = torch.Tensor._make_subclass(cls, torch.empty_like(like, device="meta"))
        absent.absent_name = name
        return absent

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        for value in (*args, *(kwargs or {}).values()):
            if isinstance(value, _Absent):
                raise _AbsentUsed(value.absent_name)
        return super().__torch_function__(func, types, args, kwargs)


_ORIGINAL_REGISTER = torch.nn.Module.register_parameter
_on_meta = threading.local()  # .depth > 0 while this thread is inside parameters_on_meta
_patch_lock = threading.Lock()
_patch_users = 0


def _register_on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
    if param is not None and getattr(_on_meta, "depth", 0):
        param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    _ORIGINAL_REGISTER(module, name, param)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside, *in this thread*, get their parameters on ``meta``; buffers
    stay real (``torch.device("meta")`` would put the buffers there too).

    Each parameter is created by its module's constructor, then moved: the constructor's
    uninitialised allocation lives for one module at a time, and initialisation runs on
    meta.  ``Module.register_parameter`` is patched while any thread is inside (counted
    under a lock, restored by the last to leave), and the patch moves only the
    parameters of threads inside: three party threads of one process may build at once
    while a fourth builds a real model.
    """
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            torch.nn.Module.register_parameter = _register_on_meta
        _patch_users += 1
    _on_meta.depth = getattr(_on_meta, "depth", 0) + 1
    try:
        yield
    finally:
        _on_meta.depth -= 1
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                torch.nn.Module.register_parameter = _ORIGINAL_REGISTER


def hf_skeleton(directory: str | Path) -> torch.nn.Module:
    """The ``transformers`` model of ``directory``'s config, parameters on meta, tied as saved."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory)
    architectures = config.architectures or []
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return build_on_meta(
        lambda: (AutoModelForCausalLM if causal else AutoModel).from_config(config)
    )


def build_on_meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` with its parameters on meta (:func:`parameters_on_meta`), tied, in eval mode."""
    with parameters_on_meta():
        model = build()
    model.tie_weights()
    return model.eval()


class LazyCheckpoint:
    """A checkpoint directory imported group by group (see the module docstring).

    ``family`` and ``config_json`` are what a share announces; ``shapes`` are the imported
    weights' names and shapes (known before any tensor is read); :meth:`weights` yields
    ``(name, float32 tensor)`` once per weight.  ``peak_read_elements`` records the most
    checkpoint elements held in memory at once (one group's).
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.hf = hf_skeleton(self.directory)
        self.family = type(self.hf).__name__
        self.config_json = self.hf.config.to_json_string(use_diff=False)
        self.parameter_count = sum(p.numel() for p in self.hf.parameters())
        self.peak_read_elements = 0
        self._files = _TensorFiles(self.directory)
        self._sources = self._match_keys()
        try:
            with torch.no_grad():
                structure = import_hf(self.hf).unique_params()
        except _AbsentUsed as exc:
            raise ValueError(
                f"{self.directory}: the {self.family} import needs {exc}, "
                "which the checkpoint does not have"
            ) from None
        self.shapes = {name: tuple(value.shape) for name, value in structure.items()}

    def _match_keys(self) -> dict[str, str]:
        """Checkpoint key of each (untied) parameter present; a misshapen one is an error.

        A parameter the checkpoint lacks (a pooler the owner never trained, say) becomes an
        :class:`_Absent`: harmless if the import ignores it, a clear error if it reads it.
        """
        keys = self._files.keys()
        prefix = getattr(self.hf, "base_model_prefix", "") + "."
        sources, problems = {}, []
        for name, param in list(self.hf.named_parameters()):
            candidates = [name, prefix + name]
            if name.startswith(prefix):
                candidates.append(name[len(prefix) :])
            key = next((c for c in candidates if c in keys), None)
            if key is None:
                self._replace(param, _Absent.named(name, param))
            elif self._files.shape(key) != tuple(param.shape):
                problems.append(
                    f"{key} has shape {self._files.shape(key)}, the config says {tuple(param.shape)}"
                )
            else:
                sources[name] = key
        if problems:
            raise ValueError(
                f"{self.directory}: the weights do not match config.json: "
                + "; ".join(problems[:5])
                + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            )
        return sources

    def groups(self) -> list[list[str]]:
        """Parameter names read together: everything outside the layers, then each layer."""
        by_layer: dict[int | None, list[str]] = {}
        for name in self._sources:
            match = _LAYER.search(name)
            by_layer.setdefault(int(match.group(1)) if match else None, []).append(name)
        order = [None] + sorted(key for key in by_layer if key is not None)
        return [by_layer[key] for key in order if key in by_layer]

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every imported weight once, in float32, reading one group of tensors at a time."""
        sent: set[str] = set()
        for group in [[], *self.groups()]:
            self._place(group, real=True)
            try:
                with torch.no_grad():
                    imported = import_hf(self.hf).unique_params()
            finally:
                self._place(group, real=False)
            for name, value in imported.items():
                if name not in sent and value.device.type != "meta":
                    sent.add(name)
                    yield name, value.detach().to(torch.float32)
            del imported
        missing = [name for name in self.shapes if name not in sent]
        if missing:
            raise ValueError(
                f"{self.family}: weights {missing[:5]} combine tensors of different layers "
                "and cannot be imported layer by layer; share this model without streaming"
            )

    def _place(self, names: list[str], real: bool) -> None:
        """Read ``names`` from the checkpoint into the skeleton, or put them back on meta."""
        held = 0
        for name in names:
            module_name, _, leaf = name.rpartition(".")
            old = self.hf.get_submodule(module_name)._parameters[leaf]
            value = self._files.read(self._sources[name]) if real else old.to("meta")
            held += value.numel() if real else 0
            self._replace(old, torch.nn.Parameter(value, requires_grad=False))
        self.peak_read_elements = max(self.peak_read_elements, held)

    def _replace(self, old: torch.Tensor, new: torch.Tensor) -> None:
        """Put ``new`` wherever the skeleton holds ``old``: tied weights change together."""
        for module in self.hf.modules():
            for attr, value in module._parameters.items():
                if value is old:
                    module._parameters[attr] = new
