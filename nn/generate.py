"""Greedy or sampled generation with a KV cache, keeping every token secret.

The prompt is run once to fill the cache; each later step feeds only the newest token, so
its cost grows only with attention over the cache.  The next token goes back into the model
as the secret one-hot from ``ops.argmax`` (greedy, the default) or ``ops.sample`` (with a
:class:`Sampling`: temperature, top-k, top-p; in MPC the random draw is made jointly by the
parties), through ``ops.embedding_onehot``; its id is never opened.  Without opening tokens the parties cannot stop at an end-of-sequence token, so
exactly ``max_new_tokens`` tokens are produced -- unless the client, who sees each token as
it streams out, asks them to stop (``on_step``), which tells them the output's length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

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
        attention_mask: torch.Tensor | None = None,
    ) -> TensorLike: ...

    def new_cache(self) -> KVCache: ...


@dataclass(frozen=True)
class Sampling:
    """Public sampling options, named as in transformers' ``generate``.

    ``top_k=None`` and ``top_p=None`` restrict nothing (transformers defaults to top_k=50).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


def sampling_options(
    vocab: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Sampling | None:
    """The checked options for :func:`generate` (None: greedy); bad values raise ValueError
    even when ``do_sample`` is False, before any party does work."""
    from veil.protocols.approx.sampling import check_sampling

    check_sampling(vocab, temperature, top_k, top_p)
    return Sampling(temperature, top_k, top_p) if do_sample else None


def generate(
    model: CausalLM,
    ops: Backend,
    input_ids: TensorLike,
    max_new_tokens: int,
    progress: Progress | None = None,
    sampling: Sampling | None = None,
    on_step: Callable[[TensorLike], bool] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> list[TensorLike]:
    """Extend prompts (batch, seq) by ``max_new_tokens`` tokens.

    Prompts of different lengths come left padded with their public 0/1 ``attention_mask``
    (see :mod:`veil.nn.padding`); each row then gets the tokens it would get alone.

    Greedy unless ``sampling`` is given.  Returns the per-step token indices, each (batch,),
    as the backend holds them (secret in MPC: the caller reveals them to the client).
    ``progress`` advances once per layer per step (``len(model.blocks) * max_new_tokens``).
    ``on_step`` sees each step's indices as soon as the step ends (so they can stream to the
    client); returning True ends generation there.  In MPC every party must return the same
    value at the same step (:func:`veil.nn.stopping.any_party`), or their messages would mix.
    """

    def next_token(logits: TensorLike) -> tuple[TensorLike, TensorLike]:
        if sampling is None:
            return ops.argmax(logits)
        return ops.sample(logits, sampling.temperature, sampling.top_k, sampling.top_p)

    cache = model.new_cache()
    logits = model(
        ops, input_ids, cache=cache, last_only=True, progress=progress, attention_mask=attention_mask
    )
    onehot, index = next_token(logits)
    indices = [index]
    while True:
        stop = on_step is not None and on_step(index)
        if stop or len(indices) == max_new_tokens:
            return indices
        logits = model(
            ops, onehot=onehot.unsqueeze(1), cache=cache, last_only=True, progress=progress
        )
        onehot, index = next_token(logits)
        indices.append(index)
