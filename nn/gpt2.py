"""GPT-2 (GPT2LMHeadModel): pre-norm decoder with learned positions and a tied LM head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from veil.nn import padding
from veil.nn.backend import Backend, TensorLike
from veil.nn.modules import (
    MLP,
    Attention,
    AttentionShape,
    Embedding,
    KVCache,
    LayerCache,
    LayerNorm,
    Linear,
    Module,
    causal_mask,
    detached,
    fold_gain,
    gelu_form,
)
from veil.nn.progress import Progress, tracked

if TYPE_CHECKING:
    import transformers
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    from transformers.pytorch_utils import Conv1D


@dataclass
class GPT2Config:
    """The public hyper-parameters of GPT-2."""

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    layer_norm_eps: float
    gelu_approximate: str = "tanh"

    @classmethod
    def from_hf(cls, hf_config: transformers.GPT2Config) -> GPT2Config:
        if not hf_config.scale_attn_weights or hf_config.scale_attn_by_inverse_layer_idx:
            raise ValueError("only the standard 1/sqrt(head_dim) attention scale is supported")
        return cls(
            vocab_size=hf_config.vocab_size,
            n_positions=hf_config.n_positions,
            n_embd=hf_config.n_embd,
            n_layer=hf_config.n_layer,
            n_head=hf_config.n_head,
            layer_norm_eps=hf_config.layer_norm_epsilon,
            gelu_approximate=gelu_form(hf_config.activation_function),
        )


def _conv1d(layer: Conv1D) -> Linear:
    """GPT-2's Conv1D already stores its weight (in, out)."""
    return Linear(detached(layer.weight), detached(layer.bias))


class Block(Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, ln_1: LayerNorm, attn: Attention, ln_2: LayerNorm, mlp: MLP):
        self.ln_1 = ln_1
        self.attn = attn
        self.ln_2 = ln_2
        self.mlp = mlp

    def __call__(
        self, ops: Backend, x: TensorLike, mask: torch.Tensor, cache: LayerCache | None
    ) -> TensorLike:
        x = x + self.attn(ops, x, mask, cache, norm=self.ln_1)
        return x + self.mlp(ops, x, norm=self.ln_2)

    @classmethod
    def from_hf(cls, hf_block: GPT2Block, config: GPT2Config) -> Block:
        """Each LayerNorm's gain and shift are folded into the projection it feeds."""
        head_dim = config.n_embd // config.n_head
        ln_1, qkv = fold_gain(LayerNorm.from_torch(hf_block.ln_1), _conv1d(hf_block.attn.c_attn))
        ln_2, up = fold_gain(LayerNorm.from_torch(hf_block.ln_2), _conv1d(hf_block.mlp.c_fc))
        return cls(
            ln_1=ln_1,
            attn=Attention.from_projections(
                qkv,
                _conv1d(hf_block.attn.c_proj),
                AttentionShape(config.n_head, config.n_head, head_dim),
            ),
            ln_2=ln_2,
            mlp=MLP(up, _conv1d(hf_block.mlp.c_proj), config.gelu_approximate),
        )


class GPT2LMHeadModel(Module):
    """Token and position embeddings, pre-norm blocks, final LayerNorm, LM head tied to ``wte``."""

    def __init__(
        self,
        config: GPT2Config,
        wte: Embedding,
        wpe: Embedding,
        blocks: list[Block],
        ln_f: LayerNorm,
    ):
        self.config = config
        self.wte = wte
        self.wpe = wpe
        self.blocks = blocks
        self.ln_f = ln_f

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
    ) -> TensorLike:
        """Next-token logits for tokens given as ids (batch, seq) or one-hot (batch, seq, vocab).

        Returns (batch, seq, vocab), or (batch, vocab) for the last position only when
        ``last_only``.  With a ``cache`` the tokens continue the cached sequence.  A public
        left-padded ``attention_mask`` (batch, past + seq) batches prompts of different
        lengths (:mod:`veil.nn.padding`); the cache keeps it for later steps.
        """
        tokens = self.wte(ops, input_ids) if onehot is None else self.wte.from_onehot(ops, onehot)
        seq = tokens.shape[1]
        past = 0 if cache is None else cache.length
        keys = padding.extend(None if cache is None else cache.key_mask, attention_mask, tokens.shape[0], seq)
        if keys is None:
            x = tokens + self.wpe.rows(torch.arange(past, past + seq))
            mask = causal_mask(seq, past)
        else:
            x = tokens + self.wpe.rows(padding.positions(keys, seq))
            mask = padding.attention_mask(keys, seq)
        layer_caches = [None] * len(self.blocks) if cache is None else cache.layers
        for block, layer_cache in tracked(zip(self.blocks, layer_caches), progress):
            x = block(ops, x, mask, layer_cache)
        if cache is not None:
            cache.length += seq
            cache.key_mask = keys
        # The tied head rides inside the final norm (2 rounds fewer in MPC than norm, then head).
        return self.ln_f(ops, x[:, -1] if last_only else x, then=self.wte.head())

    def new_cache(self) -> KVCache:
        return KVCache.empty(len(self.blocks))

    @classmethod
    def from_hf(cls, hf_model: transformers.GPT2LMHeadModel) -> GPT2LMHeadModel:
        """From a ``transformers`` GPT2LMHeadModel (its LM head is tied to ``wte``)."""
        config = GPT2Config.from_hf(hf_model.config)
        t = hf_model.transformer
        if hf_model.lm_head.weight is not t.wte.weight:
            raise ValueError("only GPT-2 with the LM head tied to the token embeddings")
        return cls(
            config,
            wte=Embedding(detached(t.wte.weight)),
            wpe=Embedding(detached(t.wpe.weight)),
            blocks=[Block.from_hf(block, config) for block in t.h],
            ln_f=LayerNorm.from_torch(t.ln_f),
        )
