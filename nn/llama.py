"""LLaMA family (LlamaForCausalLM, e.g. SmolLM2): RMSNorm, RoPE, grouped-query attention, SwiGLU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from veil.nn import padding
from veil.nn.backend import Backend, TensorLike
from veil.nn.modules import (
    Attention,
    AttentionShape,
    Embedding,
    KVCache,
    LayerCache,
    Linear,
    Module,
    RMSNorm,
    Rotary,
    SwiGLU,
    causal_mask,
    detached,
    fold_gain,
)
from veil.nn.progress import Progress, tracked

if TYPE_CHECKING:
    import transformers
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer


@dataclass
class LlamaConfig:
    """The public hyper-parameters of a LLaMA-family decoder (GQA when n_kv_head < n_head)."""

    vocab_size: int
    hidden_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool

    @classmethod
    def from_hf(cls, hf_config: transformers.LlamaConfig) -> LlamaConfig:
        if hf_config.hidden_act != "silu":
            raise ValueError(f"unsupported activation {hf_config.hidden_act!r}")
        # transformers >= 5 keeps RoPE settings in rope_parameters, older versions flat.
        rope = getattr(hf_config, "rope_parameters", None) or {
            "rope_type": "default",
            "rope_theta": hf_config.rope_theta,
        }
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported RoPE scaling {rope['rope_type']!r}")
        n_head = hf_config.num_attention_heads
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            n_layer=hf_config.num_hidden_layers,
            n_head=n_head,
            n_kv_head=hf_config.num_key_value_heads,
            head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_head,
            intermediate_size=hf_config.intermediate_size,
            rms_norm_eps=hf_config.rms_norm_eps,
            rope_theta=rope["rope_theta"],
            tie_word_embeddings=hf_config.tie_word_embeddings,
        )


STREAM_SCALE_BITS = 2
"""The residual stream is carried at 2^-2 of its value (see :func:`scaled_stream`)."""


def scaled_stream(linear: Linear, bits: int = STREAM_SCALE_BITS) -> Linear:
    """A projection that writes into the residual stream, scaled by 2^-bits.

    LLaMA-family residual streams carry outliers: SmolLM2's first position (its attention
    sink) reaches |x| ~ 25,000, a row sum of squares ~ 2^29, over the norm protocols' 2^26
    (:mod:`veil.protocols.approx.layernorm`).  Every writer of the stream (the embedding, the
    attention output and the MLP down projection) is scaled by 2^-2 and every reader is a
    norm, which is scale-invariant once its eps is scaled by 2^-4: the model computes the same
    function (exactly in float: powers of two), while MPC's norms see rows 16 times smaller in
    sum of squares without truncating them first (2 rounds per norm before: the protocols'
    ``headroom_bits``).  The stream loses 2 bits of absolute precision (2^-16 at f = 18).
    """
    scale = 2.0**-bits
    return Linear(linear.weight * scale, None if linear.bias is None else linear.bias * scale)


class Block(Module):
    """x + attn(norm(x)), then x + swiglu(norm(x)), on the scaled stream of :func:`scaled_stream`."""

    def __init__(self, attn_norm: RMSNorm, attn: Attention, mlp_norm: RMSNorm, mlp: SwiGLU):
        self.attn_norm = attn_norm
        self.attn = attn
        self.mlp_norm = mlp_norm
        self.mlp = mlp

    def __call__(
        self,
        ops: Backend,
        x: TensorLike,
        mask: torch.Tensor,
        cache: LayerCache | None,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> TensorLike:
        x = x + self.attn(ops, x, mask, cache, rope, norm=self.attn_norm)
        return x + self.mlp(ops, x, norm=self.mlp_norm)

    @classmethod
    def from_hf(cls, hf_layer: LlamaDecoderLayer, config: LlamaConfig) -> Block:
        """Each RMSNorm's gain is folded into the projection it feeds; the output
        projections write the scaled stream and the norms' eps matches it."""
        a, m = hf_layer.self_attn, hf_layer.mlp
        eps = config.rms_norm_eps * 4.0**-STREAM_SCALE_BITS
        attn_norm, qkv = fold_gain(
            RMSNorm(detached(hf_layer.input_layernorm.weight), eps),
            Linear.from_torch(a.q_proj, a.k_proj, a.v_proj),
        )
        mlp_norm, gate_up = fold_gain(
            RMSNorm(detached(hf_layer.post_attention_layernorm.weight), eps),
            Linear.from_torch(m.gate_proj, m.up_proj),
        )
        return cls(
            attn_norm=attn_norm,
            attn=Attention.from_projections(
                qkv,
                scaled_stream(Linear.from_torch(a.o_proj)),
                AttentionShape(config.n_head, config.n_kv_head, config.head_dim),
            ),
            mlp_norm=mlp_norm,
            mlp=SwiGLU(gate_up, scaled_stream(Linear.from_torch(m.down_proj))),
        )


class LlamaForCausalLM(Module):
    """Token embeddings, pre-norm blocks with RoPE, final RMSNorm, LM head (tied: ``lm_head=None``)."""

    def __init__(
        self,
        config: LlamaConfig,
        embed: Embedding,
        blocks: list[Block],
        norm: RMSNorm,
        lm_head: Linear | None,
    ):
        self.config = config
        self.embed = embed
        self.blocks = blocks
        self.norm = norm
        self.lm_head = lm_head
        self.rotary = Rotary(config.head_dim, config.rope_theta)

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
        x = self.embed(ops, input_ids) if onehot is None else self.embed.from_onehot(ops, onehot)
        seq = x.shape[1]
        past = 0 if cache is None else cache.length
        keys = padding.extend(None if cache is None else cache.key_mask, attention_mask, x.shape[0], seq)
        if keys is None:
            rope = self.rotary.tables(torch.arange(past, past + seq))
            mask = causal_mask(seq, past)
        else:
            rope = self.rotary.tables(padding.positions(keys, seq))
            mask = padding.attention_mask(keys, seq)
        layer_caches = [None] * len(self.blocks) if cache is None else cache.layers
        for block, layer_cache in tracked(zip(self.blocks, layer_caches), progress):
            x = block(ops, x, mask, layer_cache, rope)
        if cache is not None:
            cache.length += seq
            cache.key_mask = keys
        # The head rides inside the final norm (2 rounds fewer in MPC than norm, then head).
        head = self.embed.head() if self.lm_head is None else self.lm_head
        return self.norm(ops, x[:, -1] if last_only else x, then=head)

    def new_cache(self) -> KVCache:
        return KVCache.empty(len(self.blocks))

    @classmethod
    def from_hf(cls, hf_model: transformers.LlamaForCausalLM) -> LlamaForCausalLM:
        """From a ``transformers`` LlamaForCausalLM (also loaded from GGUF), on the scaled
        residual stream (:func:`scaled_stream`): a tied LM head reads the scaled table, so
        the final norm's gain takes the 2^2 back."""
        config = LlamaConfig.from_hf(hf_model.config)
        m = hf_model.model
        tied = hf_model.lm_head.weight is m.embed_tokens.weight
        scale = 2.0**STREAM_SCALE_BITS
        gain = detached(m.norm.weight)
        return cls(
            config,
            embed=Embedding(detached(m.embed_tokens.weight) / scale),
            blocks=[Block.from_hf(layer, config) for layer in m.layers],
            norm=RMSNorm(gain * scale if tied else gain, config.rms_norm_eps / scale**2),
            lm_head=None if tied else Linear.from_torch(hf_model.lm_head),
        )
