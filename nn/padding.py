"""Left padding: prompts of different lengths decoded in one batch, one pass over the weights.

Rows are padded on the left so that every row ends in a real token: the last position is
the one whose logits choose the next token, and the tokens generated later line up.  The
0/1 ``attention_mask`` (batch, keys) is public, as transformers takes it (the lengths are
public like every shape); the ids stay secret.  Each row computes what it would alone:

- padded keys are hidden from every query (the public mask of the softmax, whose masked
  probabilities are exactly 0 in MPC too);
- positions (GPT-2's learned position rows, LLaMA's RoPE angles) count from 0 at each row's
  first real token, as transformers' ``cumsum(mask) - 1``.

A padded query sees only its own key, never a real one, so that its softmax row is not
empty (the protocol needs one kept entry per row); its output is never read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

UNPADDED_FAMILIES = ("Gemma3ForCausalLM",)
"""Decoders that take prompts of one length per request: Gemma 3's local layers keep only
the last ``sliding_window - 1`` keys, and padding inside that window is not handled yet."""


def check_unpadded(attention_mask: torch.Tensor | None, family: str) -> None:
    """Refuse a mask with padding for a family in :data:`UNPADDED_FAMILIES`, naming both."""
    if attention_mask is not None and not bool(torch.as_tensor(attention_mask).bool().all()):
        raise ValueError(
            f"{family} takes prompts of one length per request: left-padded batches (an "
            "attention_mask with zeros) are not supported for it yet"
        )


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (batch, longest), for prompts of different lengths."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), longest, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, longest - len(prompt):] = 1
    return ids, mask


def as_batch(
    prompts: torch.Tensor | Sequence[Sequence[int]], attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids, mask) from a (batch, seq) tensor and its optional mask, or from a list of prompts,
    left padded here when their lengths differ (mask None: nothing is padded)."""
    if isinstance(prompts, torch.Tensor) or attention_mask is not None:
        return torch.as_tensor(prompts), attention_mask
    if len({len(p) for p in prompts}) > 1:
        return left_pad(prompts)
    return torch.as_tensor(prompts), None


def check_left_padded(attention_mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The mask as a long tensor, or ValueError naming the row that is not left padded."""
    mask = torch.as_tensor(attention_mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, the ids {tuple(shape)}")
    if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 and 1")
    mask = mask.long()
    for row in range(mask.shape[0]):
        if mask[row, -1] != 1 or bool((mask[row, 1:] < mask[row, :-1]).any()):
            raise ValueError(
                f"attention_mask row {row} is not left padded (zeros, then ones up to the "
                f"last position): {mask[row].tolist()}"
            )
    return mask


def extend(past: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int, seq: int) -> torch.Tensor | None:
    """The (batch, keys) mask of every key after ``seq`` more tokens, or None if nothing is padded.

    ``attention_mask`` covers past and new tokens as in transformers; without one, the new
    tokens are real and continue the cached mask ``past``.
    """
    if attention_mask is not None:
        return torch.as_tensor(attention_mask).long()
    if past is None:
        return None
    return torch.cat([past, past.new_ones(batch, seq)], dim=1)


def positions(keys: torch.Tensor, seq: int) -> torch.Tensor:
    """(batch, seq) positions of the last ``seq`` keys, counted from each row's first real one."""
    return (keys.cumsum(-1) - 1).clamp(min=0)[:, -seq:]


def attention_mask(keys: torch.Tensor, seq: int) -> torch.Tensor:
    """(batch, 1, seq, keys) bool: causal, real keys only, and each query its own key."""
    n = keys.shape[1]
    key_pos = torch.arange(n)
    query_pos = torch.arange(n - seq, n)
    causal = key_pos[None, :] <= query_pos[:, None]
    own = key_pos[None, :] == query_pos[:, None]
    return ((causal & keys.bool()[:, None, :]) | own)[:, None]
