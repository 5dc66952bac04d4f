"""BERT encoder (BertModel, BertForSequenceClassification) and MiniLM sentence embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from veil.nn.backend import Backend, TensorLike
from veil.nn.modules import (
    MLP,
    Attention,
    AttentionShape,
    Embedding,
    LayerNorm,
    Linear,
    Module,
    detached,
    gelu_form,
    padding_mask,
)
from veil.nn.progress import Progress, tracked

if TYPE_CHECKING:
    import transformers
    from transformers.models.bert.modeling_bert import BertLayer as BertLayerHF


@dataclass
class BertConfig:
    """The public hyper-parameters of a BERT encoder."""

    vocab_size: int
    hidden_size: int
    n_layer: int
    n_head: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    gelu_approximate: str = "none"

    @classmethod
    def from_hf(cls, hf_config: transformers.BertConfig) -> BertConfig:
        if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            n_layer=hf_config.num_hidden_layers,
            n_head=hf_config.num_attention_heads,
            intermediate_size=hf_config.intermediate_size,
            max_position_embeddings=hf_config.max_position_embeddings,
            type_vocab_size=hf_config.type_vocab_size,
            layer_norm_eps=hf_config.layer_norm_eps,
            gelu_approximate=gelu_form(hf_config.hidden_act),
        )


class BertLayer(Module):
    """Post-norm encoder layer: attention, add & norm, GeLU MLP, add & norm."""

    def __init__(self, attn: Attention, ln_attn: LayerNorm, mlp: MLP, ln_mlp: LayerNorm):
        self.attn = attn
        self.ln_attn = ln_attn
        self.mlp = mlp
        self.ln_mlp = ln_mlp

    def __call__(
        self,
        ops: Backend,
        x: TensorLike,
        mask: torch.Tensor,
        projected: TensorLike | None = None,
        then: Linear | None = None,
    ) -> TensorLike | tuple[TensorLike, TensorLike]:
        """The layer's output, or with ``then`` the pair (output, then(output)).

        Each norm hands the linear layer after it its projection made inside the norm
        (:meth:`LayerNorm.projected`, 2 rounds sooner in MPC): ``ln_attn`` the MLP's up
        projection, ``ln_mlp`` the next layer's QKV (``then``); ``projected`` is this
        layer's QKV projection of ``x``, made so by the norm before it.
        """
        attended = x + self.attn(ops, x, mask, projected=projected)
        x, up = self.ln_attn.projected(ops, attended, self.mlp.up)
        x = x + self.mlp.after_up(ops, up)
        return self.ln_mlp(ops, x) if then is None else self.ln_mlp.projected(ops, x, then)

    @classmethod
    def from_hf(cls, hf_layer: BertLayerHF, config: BertConfig) -> BertLayer:
        a = hf_layer.attention.self
        head_dim = config.hidden_size // config.n_head
        return cls(
            attn=Attention.from_projections(
                Linear.from_torch(a.query, a.key, a.value),
                Linear.from_torch(hf_layer.attention.output.dense),
                AttentionShape(config.n_head, config.n_head, head_dim),
            ),
            ln_attn=LayerNorm.from_torch(hf_layer.attention.output.LayerNorm),
            mlp=MLP(
                Linear.from_torch(hf_layer.intermediate.dense),
                Linear.from_torch(hf_layer.output.dense),
                config.gelu_approximate,
            ),
            ln_mlp=LayerNorm.from_torch(hf_layer.output.LayerNorm),
        )


class BertModel(Module):
    """Embeddings, encoder layers and (optionally) the tanh pooler over the first token."""

    def __init__(
        self,
        config: BertConfig,
        wte: Embedding,
        wpe: Embedding,
        wtt: Embedding,
        ln_emb: LayerNorm,
        layers: list[BertLayer],
        pooler: Linear | None,
    ):
        self.config = config
        self.wte = wte
        self.wpe = wpe
        self.wtt = wtt
        self.ln_emb = ln_emb
        self.layers = layers
        self.pooler = pooler

    def __call__(
        self,
        ops: Backend,
        input_ids: TensorLike,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        progress: Progress | None = None,
    ) -> TensorLike:
        """Last hidden state (batch, seq, hidden) for (possibly secret) ids (batch, seq).

        ``attention_mask`` (batch, seq) and ``token_type_ids`` are public: padding and the
        segment layout follow from the public sequence lengths.  ``progress`` advances
        once per layer.
        """
        seq = attention_mask.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(attention_mask, dtype=torch.long)
        x = (
            self.wte(ops, input_ids)
            + self.wpe.rows(torch.arange(seq))
            + self.wtt.rows(token_type_ids)
        )
        mask = padding_mask(attention_mask)
        if not self.layers:
            return self.ln_emb(ops, x)
        # Each norm also makes the next layer's QKV projection (see BertLayer).
        x, projected = self.ln_emb.projected(ops, x, self.layers[0].attn.qkv)
        for i, layer in enumerate(tracked(self.layers, progress)):
            if i + 1 < len(self.layers):
                x, projected = layer(ops, x, mask, projected, self.layers[i + 1].attn.qkv)
            else:
                x = layer(ops, x, mask, projected)
        return x

    def pool(self, ops: Backend, hidden: TensorLike) -> TensorLike:
        """BERT's pooled output: tanh(dense(first token))."""
        return ops.tanh(self.pooler(hidden[:, 0]))

    @classmethod
    def from_hf(cls, hf_model: transformers.BertModel, pooler: bool = True) -> BertModel:
        """From a ``transformers`` BertModel; ``pooler=False`` drops the pooler weights."""
        config = BertConfig.from_hf(hf_model.config)
        emb = hf_model.embeddings
        keep_pooler = pooler and hf_model.pooler is not None
        return cls(
            config,
            wte=Embedding(detached(emb.word_embeddings.weight)),
            wpe=Embedding(detached(emb.position_embeddings.weight)),
            wtt=Embedding(detached(emb.token_type_embeddings.weight)),
            ln_emb=LayerNorm.from_torch(emb.LayerNorm),
            layers=[BertLayer.from_hf(layer, config) for layer in hf_model.encoder.layer],
            pooler=Linear.from_torch(hf_model.pooler.dense) if keep_pooler else None,
        )


class BertForSequenceClassification(Module):
    """BERT with a linear classifier on the pooled output."""

    def __init__(self, bert: BertModel, classifier: Linear):
        self.bert = bert
        self.classifier = classifier

    def __call__(
        self,
        ops: Backend,
        input_ids: TensorLike,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> TensorLike:
        """Class logits (batch, num_labels)."""
        hidden = self.bert(ops, input_ids, attention_mask, token_type_ids)
        return self.classifier(self.bert.pool(ops, hidden))

    @classmethod
    def from_hf(
        cls, hf_model: transformers.BertForSequenceClassification
    ) -> BertForSequenceClassification:
        return cls(BertModel.from_hf(hf_model.bert), Linear.from_torch(hf_model.classifier))


def mean_pool(hidden: TensorLike, attention_mask: torch.Tensor) -> TensorLike:
    """Average of the hidden states over the real (unpadded) tokens: (batch, hidden).

    The mask and the token counts are public, so this is a public-weight sum.  The weights
    take the dtype of plaintext ``hidden`` (float64 for shares, which encode them exactly).
    """
    dtype = hidden.dtype if isinstance(hidden, torch.Tensor) else torch.float64
    weights = attention_mask.to(dtype)
    weights = weights / weights.sum(dim=1, keepdim=True)
    return (hidden * weights[:, :, None]).sum(dim=1)


def sentence_embedding(
    model: BertModel,
    ops: Backend,
    input_ids: TensorLike,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> TensorLike:
    """The sentence-transformers MiniLM embedding before L2 normalisation.

    Normalise at the client after :meth:`Backend.reveal` (see :func:`normalize`); that
    keeps a reciprocal square root out of the private computation.
    """
    hidden = model(ops, input_ids, attention_mask, token_type_ids, progress)
    return mean_pool(hidden, attention_mask)


def normalize(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalise revealed embeddings (client side)."""
    return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(1e-12)
