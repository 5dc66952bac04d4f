"""Gemma 3 (Gemma3ForCausalLM, e.g. Gemma-3-270M): what it adds to the LLaMA family.

- RMSNorm gains are stored as ``w`` and applied as ``1 + w``;
- every block normalises both before and after attention and the MLP ("sandwich" norms);
- queries and keys get their own per-head RMSNorm before RoPE;
- the MLP is GeGLU with tanh GeLU;
- token embeddings are scaled by sqrt(hidden);
- layers are local (attending to the last ``sliding_window`` positions, a public mask) or
  global, with their own RoPE bases;
- scores are scaled by ``query_pre_attn_scalar ** -0.5`` rather than ``head_dim ** -0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

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
    apply_rotary,
    causal_mask,
    detached,
    fold_gain,
    gelu_form,
)
from veil.nn.padding import check_unpadded
from veil.nn.progress import Progress, tracked

if TYPE_CHECKING:
    import transformers
    from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer

LOCAL, GLOBAL = "sliding_attention", "full_attention"


@dataclass
class Gemma3Config:
    """The public hyper-parameters of a Gemma 3 text decoder."""

    vocab_size: int
    hidden_size: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    query_pre_attn_scalar: float
    sliding_window: int
    layer_types: list[str]
    rope_theta: dict[str, float]
    gelu_approximate: str
    tie_word_embeddings: bool

    @classmethod
    def from_hf(cls, hf_config: transformers.Gemma3TextConfig) -> Gemma3Config:
        """Refuses, naming the setting, what this implementation would silently get wrong."""
        for name in ("final_logit_softcapping", "attn_logit_softcapping"):
            if getattr(hf_config, name, None) is not None:
                raise ValueError(f"unsupported Gemma 3 setting {name}={getattr(hf_config, name)}")
        if getattr(hf_config, "use_bidirectional_attention", False):
            raise ValueError("unsupported Gemma 3 setting use_bidirectional_attention=True")
        layer_types = list(hf_config.layer_types)
        unknown = set(layer_types) - {LOCAL, GLOBAL}
        if unknown:
            raise ValueError(f"unsupported Gemma 3 layer types {sorted(unknown)}")
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            n_layer=hf_config.num_hidden_layers,
            n_head=hf_config.num_attention_heads,
            n_kv_head=hf_config.num_key_value_heads,
            head_dim=hf_config.head_dim,
            intermediate_size=hf_config.intermediate_size,
            rms_norm_eps=hf_config.rms_norm_eps,
            query_pre_attn_scalar=hf_config.query_pre_attn_scalar,
            sliding_window=hf_config.sliding_window,
            layer_types=layer_types,
            rope_theta=_rope_bases(hf_config),
            gelu_approximate=gelu_form(hf_config.hidden_activation),
            tie_word_embeddings=hf_config.tie_word_embeddings,
        )


def _rope_bases(hf_config: transformers.Gemma3TextConfig) -> dict[str, float]:
    """RoPE base per layer type; transformers >= 5 nests them in rope_parameters."""
    rope = getattr(hf_config, "rope_parameters", None) or {
        GLOBAL: {"rope_theta": hf_config.rope_theta},
        LOCAL: {"rope_theta": hf_config.rope_local_base_freq},
    }
    bases = {}
    for layer_type in (LOCAL, GLOBAL):
        params = rope[layer_type]
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported RoPE scaling {params['rope_type']!r} ({layer_type})")
        bases[layer_type] = params["rope_theta"]
    return bases


RESIDUAL_NORM_INPUT_SCALE = 2.0**-4
"""What the norms reading the residual stream scale their rows by first.  Gemma-3-270M's
residual rows reach sum(x^2) ~ 2^33.3, over the norm protocol's S < 2^26; at 2^-4 they
are under 2^25.3.  (The protocol's global ``headroom_bits`` would do the same to every norm,
and the attention and MLP outputs that the post-norms read are small, sum(x^2) down to
~2^3, which 4 bits would push below the rsqrt window.)"""


class GemmaRMSNorm(RMSNorm):
    """RMSNorm of ``x * input_scale`` (eps scaled to match: the same function in float),
    then the gain, if any, as a separate product.

    Gemma-3-270M's post-norm gains reach ~900 and write elements up to ~2e4 into the
    residual stream, beyond the output range of the norm protocol's fused gain (|y| < 1024,
    see :mod:`veil.protocols.approx.layernorm`); a plain product of the normalised row
    (|y| <= sqrt(n)) and the gain allows |y| < 2^26, for one more truncation.
    """

    def __init__(self, weight: TensorLike | None, eps: float, input_scale: float = 1.0):
        super().__init__(weight, eps)
        self.input_scale = input_scale

    def __call__(self, ops: Backend, x: TensorLike, then: Linear | None = None) -> TensorLike:
        """The norm, or ``then(norm(x))``: without a gain of its own (a folded pre-norm) the
        matmul is fused into the norm as in :class:`veil.nn.modules.RMSNorm`."""
        if self.input_scale != 1.0:
            x = x * self.input_scale
        eps = self.eps * self.input_scale**2
        if then is not None and self.weight is None:
            return then.add_bias(ops.rmsnorm(x, None, eps, then.weight))
        y = ops.rmsnorm(x, None, eps)
        y = y if self.weight is None else y * self.weight
        return y if then is None else then(y)

    @classmethod
    def from_hf(cls, hf_norm: torch.nn.Module, eps: float, input_scale: float = 1.0) -> GemmaRMSNorm:
        """Gemma stores RMSNorm gains as offsets from 1."""
        return cls(1.0 + detached(hf_norm.weight), eps, input_scale)


def residual_norm_into(hf_norm: torch.nn.Module, linear: Linear, eps: float) -> tuple[GemmaRMSNorm, Linear]:
    """A pre-norm of the residual stream with its gain folded into the Linear it feeds."""
    folded, linear = fold_gain(GemmaRMSNorm.from_hf(hf_norm, eps), linear)
    return GemmaRMSNorm(None, folded.eps, RESIDUAL_NORM_INPUT_SCALE), linear


class GeGLU(Module):
    """Gemma feed-forward: ``down(gelu(gate(x)) * up(x))``, gate and up fused into one matmul."""

    def __init__(self, gate_up: Linear, down: Linear, gelu_approximate: str):
        self.gate_up = gate_up
        self.down = down
        self.gelu_approximate = gelu_approximate

    def __call__(self, ops: Backend, x: TensorLike, norm: GemmaRMSNorm | None = None) -> TensorLike:
        """``norm``: the pre-norm applied to ``x`` first, fused with ``gate_up``."""
        h = self.gate_up(x) if norm is None else norm(ops, x, then=self.gate_up)
        hidden = h.shape[-1] // 2
        return self.down(ops.gelu(h[..., :hidden], approximate=self.gelu_approximate) * h[..., hidden:])


class QKNormAttention(Attention):
    """Attention whose queries and keys are RMS-normalised per head before RoPE.

    ``qk_gain`` (n_head + n_kv_head, 1, head_dim) holds the query heads' gains, already
    times the score scale ``query_pre_attn_scalar ** -0.5`` (a norm's output scale is its
    gain, so the scale costs no extra product), then the key heads' gains.  Queries and keys
    are normalised in one protocol call: one rsqrt round trip for both.
    """

    param_names = ("qk_gain",)

    def __init__(
        self, qkv: Linear, out: Linear, shape: AttentionShape, qk_gain: TensorLike, eps: float
    ):
        super().__init__(qkv, out, shape)
        self.qk_gain = qk_gain
        self.eps = eps

    def _rotate(
        self, ops: Backend, q: TensorLike, k: TensorLike, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[TensorLike, TensorLike]:
        qk = ops.rmsnorm(ops.cat([q, k], dim=1), self.qk_gain, self.eps)
        qk = apply_rotary(ops, qk, *rope)
        return qk[:, : self.shape.n_head], qk[:, self.shape.n_head :]

    @classmethod
    def from_hf(cls, hf_attn: torch.nn.Module, config: Gemma3Config, qkv: Linear) -> QKNormAttention:
        eps = config.rms_norm_eps
        q_gain = (1.0 + detached(hf_attn.q_norm.weight)) * config.query_pre_attn_scalar**-0.5
        k_gain = 1.0 + detached(hf_attn.k_norm.weight)
        gains = [q_gain] * config.n_head + [k_gain] * config.n_kv_head
        return cls(
            qkv,
            Linear.from_torch(hf_attn.o_proj),
            AttentionShape(config.n_head, config.n_kv_head, config.head_dim),
            torch.stack(gains)[:, None, :],
            eps,
        )


class WindowCache(LayerCache):
    """A local layer's cache: only the last ``keep`` keys and values can be seen again."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def append(self, ops: Backend, k: TensorLike, v: TensorLike) -> tuple[TensorLike, TensorLike]:
        k, v = super().append(ops, k, v)
        start = max(k.shape[2] - self.keep, 0)
        self.k, self.v = self.k[:, :, start:], self.v[:, :, start:]
        return k, v


def sliding_window_mask(seq: int, past: int, window: int, kept: int) -> torch.Tensor:
    """(seq, kept + seq) bool over keys at positions past - kept .. past + seq - 1: query
    at position p sees keys p - window + 1 .. p (Hugging Face's sliding window)."""
    keys = torch.arange(past - kept, past + seq)
    queries = torch.arange(past, past + seq)
    return (keys[None, :] <= queries[:, None]) & (keys[None, :] > queries[:, None] - window)


class Block(Module):
    """x + post_norm(attn(pre_norm(x))), then x + post_norm(geglu(pre_norm(x)))."""

    def __init__(
        self,
        attn_norm: GemmaRMSNorm,
        attn: QKNormAttention,
        post_attn_norm: GemmaRMSNorm,
        mlp_norm: GemmaRMSNorm,
        mlp: GeGLU,
        post_mlp_norm: GemmaRMSNorm,
        layer_type: str,
    ):
        self.attn_norm = attn_norm
        self.attn = attn
        self.post_attn_norm = post_attn_norm
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.post_mlp_norm = post_mlp_norm
        self.layer_type = layer_type

    def __call__(
        self,
        ops: Backend,
        x: TensorLike,
        mask: torch.Tensor,
        cache: LayerCache | None,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> TensorLike:
        x = x + self.post_attn_norm(ops, self.attn(ops, x, mask, cache, rope, norm=self.attn_norm))
        return x + self.post_mlp_norm(ops, self.mlp(ops, x, norm=self.mlp_norm))

    @classmethod
    def from_hf(cls, hf_layer: Gemma3DecoderLayer, config: Gemma3Config, layer_type: str) -> Block:
        """The pre-norms' gains are folded into the projections they feed; the post-norms
        feed the residual stream, so they keep theirs (a separate product: they are large)."""
        a, m = hf_layer.self_attn, hf_layer.mlp
        eps = config.rms_norm_eps
        attn_norm, qkv = residual_norm_into(
            hf_layer.input_layernorm, Linear.from_torch(a.q_proj, a.k_proj, a.v_proj), eps
        )
        mlp_norm, gate_up = residual_norm_into(
            hf_layer.pre_feedforward_layernorm, Linear.from_torch(m.gate_proj, m.up_proj), eps
        )
        return cls(
            attn_norm=attn_norm,
            attn=QKNormAttention.from_hf(a, config, qkv),
            post_attn_norm=GemmaRMSNorm.from_hf(hf_layer.post_attention_layernorm, eps),
            mlp_norm=mlp_norm,
            mlp=GeGLU(gate_up, Linear.from_torch(m.down_proj), config.gelu_approximate),
            post_mlp_norm=GemmaRMSNorm.from_hf(hf_layer.post_feedforward_layernorm, eps),
            layer_type=layer_type,
        )


class Gemma3ForCausalLM(Module):
    """Scaled token embeddings, sandwich-norm blocks (local and global), final RMSNorm, LM
    head (tied: ``lm_head=None``)."""

    def __init__(
        self,
        config: Gemma3Config,
        embed: Embedding,
        embed_scale: float,
        blocks: list[Block],
        norm: GemmaRMSNorm,
        lm_head: Linear | None,
    ):
        self.config = config
        self.embed = embed
        self.embed_scale = embed_scale
        self.blocks = blocks
        self.norm = norm
        self.lm_head = lm_head
        self.rotary = {kind: Rotary(config.head_dim, theta) for kind, theta in config.rope_theta.items()}

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
        """Next-token logits, called as :class:`veil.nn.generate.CausalLM` describes.

        ``attention_mask`` may only be all ones (:func:`veil.nn.padding.check_unpadded`)."""
        check_unpadded(attention_mask, type(self).__name__)
        x = self.embed(ops, input_ids) if onehot is None else self.embed.from_onehot(ops, onehot)
        # The table stays unscaled: the tied LM head reads it as it is.
        x = x * self.embed_scale
        seq = x.shape[1]
        past = 0 if cache is None else cache.length
        window = self.config.sliding_window
        positions = torch.arange(past, past + seq)
        ropes = {kind: rotary.tables(positions) for kind, rotary in self.rotary.items()}
        masks = {
            GLOBAL: causal_mask(seq, past),
            # Local caches (WindowCache) hold at most window - 1 earlier keys.
            LOCAL: sliding_window_mask(seq, past, window, min(past, window - 1)),
        }
        layer_caches = [None] * len(self.blocks) if cache is None else cache.layers
        for block, layer_cache in tracked(zip(self.blocks, layer_caches), progress):
            kind = block.layer_type
            x = block(ops, x, masks[kind], layer_cache, ropes[kind])
        if cache is not None:
            cache.length += seq
        # The head rides inside the final norm (2 rounds fewer in MPC than norm, then head).
        head = self.embed.head() if self.lm_head is None else self.lm_head
        return self.norm(ops, x[:, -1] if last_only else x, then=head)

    def new_cache(self) -> KVCache:
        keep = self.config.sliding_window - 1
        return KVCache(
            [WindowCache(keep) if b.layer_type == LOCAL else LayerCache() for b in self.blocks]
        )

    @classmethod
    def from_hf(cls, hf_model: transformers.Gemma3ForCausalLM) -> Gemma3ForCausalLM:
        """From a ``transformers`` Gemma3ForCausalLM (also loaded from GGUF)."""
        config = Gemma3Config.from_hf(hf_model.config)
        m = hf_model.model
        tied = hf_model.lm_head.weight is m.embed_tokens.weight
        return cls(
            config,
            embed=Embedding(detached(m.embed_tokens.weight)),
            # Hugging Face's own value (rounded to the weights' dtype), not sqrt(hidden) anew.
            embed_scale=float(m.embed_tokens.embed_scale),
            blocks=[
                Block.from_hf(layer, config, kind) for layer, kind in zip(m.layers, config.layer_types)
            ],
            norm=GemmaRMSNorm.from_hf(m.norm, config.rms_norm_eps, RESIDUAL_NORM_INPUT_SCALE),
            lm_head=None if tied else Linear.from_torch(hf_model.lm_head),
        )
