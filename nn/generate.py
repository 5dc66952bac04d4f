"""Greedy generation with a KV cache, keeping every token secret.

The prompt is run once to fill the cache; each later step feeds only the newest token, so
its cost grows only with attention over the cache.  The next token goes back into the model
as the secret one-hot from ``ops.argmax`` (through ``ops.embedding_onehot``); its id is never
opened.  Without opening tokens the parties cannot stop at an end-of-sequence token, so
exactly ``max_new_tokens`` tokens are produced.
"""

from __future__ import annotations

from typing import Protocol

from veil.nn.backend import Backend, TensorLike
from veil.nn.modules import KVCache
from veil.nn.progress import Progress


class CausalLM(Protocol):
    """What generation needs of a decoder (GPT2LMHeadModel, LlamaForCausalLM)."""

    blocks: list

    def __call__(
        self,
        ops: Backend,
        input_ids: TensorLike | None = None,
        *,
        onehot: TensorLike | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        progress: Progress | None = None,
    ) -> TensorLike: ...

    def new_cache(self) -> KVCache: ...


def generate(
    model: CausalLM,
    ops: Backend,
    input_ids: TensorLike,
    max_new_tokens: int,
    progress: Progress | None = None,
) -> list[TensorLike]:
    """Greedily extend prompts (batch, seq) of equal length by ``max_new_tokens`` tokens.

    Returns the per-step token indices, each (batch,), as the backend holds them (secret in
    MPC: the caller reveals them to the client).  ``progress`` advances once per layer per
    step (``len(model.blocks) * max_new_tokens`` in all).
    """
    cache = model.new_cache()
    logits = model(ops, input_ids, cache=cache, last_only=True, progress=progress)
    onehot, index = ops.argmax(logits)
    indices = [index]
    for _ in range(max_new_tokens - 1):
        logits = model(
            ops, onehot=onehot.unsqueeze(1), cache=cache, last_only=True, progress=progress
        )
        onehot, index = ops.argmax(logits)
        indices.append(index)
    return indices
