"""Building blocks shared by the model families: one code path for every backend.

Parameters and activations are *tensor-likes* (float tensors, or secret shares in the MPC
backend), so a module only uses operators, public indexing and reshapes on them, and asks
the backend ``ops`` (see :mod:`veil.nn.backend`) for everything else.  Masks, positions and the
RoPE tables are public plain tensors.  Linear weights are stored (in, out): ``x @ w + b``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from veil.nn.backend import Backend, TensorLike
from veil.protocols.approx.rotary import RotaryColumns


class Module:
    """A model part whose parameters are plain attributes named in ``param_names``.

    Attributes holding a :class:`Module`, or a list of them, are its children.  Unlike
    ``torch.nn.Module`` nothing here assumes the parameters are tensors, so the same model
    object can hold float weights or secret shares of them.
    """

    param_names: tuple[str, ...] = ()

    def children(self) -> Iterator[tuple[str, Module]]:
        """Direct submodules with their attribute names (``blocks.3`` for list items)."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_params(self) -> Iterator[tuple[str, TensorLike]]:
        """Every parameter by dotted name, depth first; a tied parameter appears once per owner."""
        for name in self.param_names:
            value = getattr(self, name)
            if value is not None:
                yield name, value
        for prefix, child in self.children():
            for name, value in child.named_params():
                yield f"{prefix}.{name}", value

    def unique_params(self) -> dict[str, TensorLike]:
        """Parameters by their first dotted name; a tied parameter appears once."""
        seen: set[int] = set()
        params = {}
        for name, value in self.named_params():
            if id(value) not in seen:
                seen.add(id(value))
                params[name] = value
        return params

    def modules(self) -> Iterator[Module]:
        """This module and every submodule, each once (even if reachable twice)."""
        seen: set[int] = set()
        stack: list[Module] = [self]
        while stack:
            module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield module
            stack.extend(child for _, child in module.children())

    def map_params(self, fn: Callable[[TensorLike], TensorLike]) -> Module:
        """Replace every parameter ``p`` by ``fn(p)`` in place and return ``self``.

        Tied parameters (the same object in two places) are mapped once and stay tied.
        The old values are dropped as they are replaced, so sharing the weights of a large
        model never holds two full copies.
        """
        # Group the slots by parameter identity while every old parameter is still alive,
        # so that ids are unique; no id is taken once replacing (and freeing) has begun.
        slots: dict[int, list[tuple[Module, str]]] = {}
        for module in self.modules():
            for name in module.param_names:
                value = getattr(module, name)
                if value is not None:
                    slots.setdefault(id(value), []).append((module, name))
        for owners in slots.values():
            first, name = owners[0]
            new = fn(getattr(first, name))
            for module, name in owners:
                setattr(module, name, new)
        return self


def detached(t: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter without autograd history (shares storage with the source)."""
    return None if t is None else t.detach()


_GELU_FORMS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


def gelu_form(hf_activation: str) -> str:
    """The ``approximate`` argument of GeLU for a Hugging Face activation name."""
    if hf_activation not in _GELU_FORMS:
        raise ValueError(f"unsupported activation {hf_activation!r}")
    return _GELU_FORMS[hf_activation]


class Linear(Module):
    """``x @ weight + bias`` with weight (in, out) and an optional bias (out,)."""

    param_names = ("weight", "bias")

    def __init__(self, weight: TensorLike, bias: TensorLike | None = None):
        self.weight = weight
        self.bias = bias

    def __call__(self, x: TensorLike) -> TensorLike:
        return self.add_bias(x @ self.weight)

    def add_bias(self, y: TensorLike) -> TensorLike:
        """``y + bias`` for a product ``y`` by the weight made elsewhere (a fused norm)."""
        return y if self.bias is None else y + self.bias

    @classmethod
    def from_torch(cls, *layers: torch.nn.Linear) -> Linear:
        """One or more ``torch.nn.Linear`` layers on the same input, outputs side by side.

        Fusing projections (QKV, gate and up) makes one matmul, so one MPC round, of them.
        """
        weight = torch.cat([layer.weight.detach().t() for layer in layers], dim=1)
        if layers[0].bias is None:
            return cls(weight)
        return cls(weight, torch.cat([layer.bias.detach() for layer in layers]))


class Embedding(Module):
    """A (vocab, dim) table looked up by secret ids, by a secret one-hot, or by public rows."""

    param_names = ("weight",)

    def __init__(self, weight: TensorLike):
        self.weight = weight

    def __call__(self, ops: Backend, ids: TensorLike) -> TensorLike:
        return ops.embedding(ids, self.weight)

    def from_onehot(self, ops: Backend, onehot: TensorLike) -> TensorLike:
        return ops.embedding_onehot(onehot, self.weight)

    def rows(self, index: torch.Tensor) -> TensorLike:
        """Rows at public indices (positions, token types)."""
        return self.weight[index]

    def unembed(self, x: TensorLike) -> TensorLike:
        """Logits against the table: a tied LM head, ``x @ weight.T``."""
        return x @ self.weight.transpose(0, 1)

    def head(self) -> Linear:
        """The tied LM head as a linear layer (weight.T, no bias), for a final norm to fuse."""
        return Linear(self.weight.transpose(0, 1))


class LayerNorm(Module):
    """LayerNorm over the last dim with gain ``weight`` and shift ``bias`` (None once folded)."""

    param_names = ("weight", "bias")

    def __init__(self, weight: TensorLike | None, bias: TensorLike | None, eps: float):
        self.weight = weight
        self.bias = bias
        self.eps = eps

    def __call__(self, ops: Backend, x: TensorLike, then: Linear | None = None) -> TensorLike:
        """The norm of ``x``, or ``then(norm(x))``: the linear layer it feeds, whose matmul
        the backend may fuse into the norm (MPC: 2 rounds fewer)."""
        if then is None:
            return ops.layernorm(x, self.weight, self.bias, self.eps)
        return then.add_bias(ops.layernorm(x, self.weight, self.bias, self.eps, then.weight))

    def projected(self, ops: Backend, x: TensorLike, then: Linear) -> tuple[TensorLike, TensorLike]:
        """A post-norm feeding ``then``: (norm(x), then(norm(x))), both 2 rounds sooner in
        MPC than the norm and then the matmul."""
        y, projected = ops.layernorm_projected(x, self.weight, self.bias, self.eps, then.weight)
        return y, then.add_bias(projected)

    @classmethod
    def from_torch(cls, layer: torch.nn.LayerNorm) -> LayerNorm:
        return cls(layer.weight.detach(), layer.bias.detach(), layer.eps)


class RMSNorm(Module):
    """RMSNorm over the last dim with gain ``weight`` (None once folded)."""

    param_names = ("weight",)

    def __init__(self, weight: TensorLike | None, eps: float):
        self.weight = weight
        self.eps = eps

    def __call__(
        self, ops: Backend, x: TensorLike, then: Linear | None = None, rotary: RotaryColumns | None = None
    ) -> TensorLike:
        """The norm of ``x``, or ``then(norm(x))`` with the matmul fused as in LayerNorm;
        ``rotary``: RoPE on that product's query and key columns (``then`` without bias)."""
        if then is None:
            return ops.rmsnorm(x, self.weight, self.eps)
        if rotary is not None:
            return ops.rmsnorm(x, self.weight, self.eps, then.weight, rotary)
        return then.add_bias(ops.rmsnorm(x, self.weight, self.eps, then.weight))


Norm = LayerNorm | RMSNorm


def _project(ops: Backend, x: TensorLike, linear: Linear, norm: Norm | None) -> TensorLike:
    """``linear(x)``, or ``linear(norm(x))`` with the matmul fused into the norm."""
    return linear(x) if norm is None else norm(ops, x, then=linear)


def fold_gain(norm: LayerNorm | RMSNorm, linear: Linear) -> tuple[LayerNorm | RMSNorm, Linear]:
    """Move a plaintext norm's gain (and shift) into the Linear that alone reads its output.

    ``(n(x) * g + b) @ W + c = n(x) @ (g[:, None] * W) + (b @ W + c)``: done once by the model
    owner, it saves the private model an elementwise product and its truncation per norm.
    Returns the norm without gain and shift, and the adjusted Linear.
    """
    weight = norm.weight[:, None] * linear.weight
    bias = linear.bias
    if isinstance(norm, LayerNorm):
        shift = norm.bias @ linear.weight
        bias = shift if bias is None else bias + shift
        return LayerNorm(None, None, norm.eps), Linear(weight, bias)
    return RMSNorm(None, norm.eps), Linear(weight, bias)


class MLP(Module):
    """GeLU feed-forward: ``down(gelu(up(x)))``."""

    def __init__(self, up: Linear, down: Linear, gelu_approximate: str = "none"):
        self.up = up
        self.down = down
        self.gelu_approximate = gelu_approximate

    def __call__(self, ops: Backend, x: TensorLike, norm: Norm | None = None) -> TensorLike:
        """``norm``: the pre-norm applied to ``x`` first, fused with ``up``."""
        return self.after_up(ops, _project(ops, x, self.up, norm))

    def after_up(self, ops: Backend, h: TensorLike) -> TensorLike:
        """``down(gelu(h))`` for ``h = up(x)`` made elsewhere (a post-norm's projection)."""
        return self.down(ops.gelu(h, approximate=self.gelu_approximate))


class SwiGLU(Module):
    """LLaMA feed-forward: ``down(silu(gate(x)) * up(x))``, gate and up fused into one matmul."""

    def __init__(self, gate_up: Linear, down: Linear):
        self.gate_up = gate_up
        self.down = down

    def __call__(self, ops: Backend, x: TensorLike, norm: Norm | None = None) -> TensorLike:
        """``norm``: the pre-norm applied to ``x`` first, fused with ``gate_up``."""
        h = _project(ops, x, self.gate_up, norm)
        hidden = h.shape[-1] // 2
        return self.down(ops.silu(h[..., :hidden]) * h[..., hidden:])


class Rotary:
    """Rotary position embedding tables (public): ``x * cos + rotate_half(x) * sin``."""

    def __init__(self, head_dim: int, theta: float):
        self.inv_freq = 1.0 / (
            theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)
        )

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (*positions.shape, head_dim), for public positions (seq,) or (batch, seq)."""
        freqs = positions.float()[..., None] * self.inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()


def apply_rotary(ops: Backend, x: TensorLike, cos: torch.Tensor, sin: torch.Tensor) -> TensorLike:
    """``x * cos + rotate_half(x) * sin`` for x (batch, heads, seq, head_dim), public tables.

    The two products are taken as one product with the stacked public (cos, sin), so that
    MPC truncates them together: one round instead of two.
    """
    half = x.shape[-1] // 2
    rotated = ops.cat([-x[..., half:], x[..., :half]], dim=-1)
    # (2, batch or 1, 1, seq, head_dim): per-row tables for left-padded batches.
    tables = torch.stack((cos, sin)).reshape(2, -1, 1, *cos.shape[-2:])
    both = ops.cat([x.unsqueeze(0), rotated.unsqueeze(0)], dim=0) * tables
    return both[0] + both[1]


@dataclass
class LayerCache:
    """One layer's keys and values so far, (batch, kv_heads, seq, head_dim)."""

    k: TensorLike = None
    v: TensorLike = None

    def append(self, ops: Backend, k: TensorLike, v: TensorLike) -> tuple[TensorLike, TensorLike]:
        """Add this step's keys and values; return all of them."""
        if self.k is not None:
            k = ops.cat([self.k, k], dim=2)
            v = ops.cat([self.v, v], dim=2)
        self.k, self.v = k, v
        return k, v


@dataclass
class KVCache:
    """Keys and values of every layer for incremental decoding; ``length`` is public, and so is
    ``key_mask``, the (batch, length) 0/1 mask of a left-padded batch (None: nothing padded)."""

    layers: list[LayerCache]
    length: int = 0
    key_mask: torch.Tensor | None = None

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls(layers=[LayerCache() for _ in range(n_layers)])


@dataclass
class AttentionShape:
    """Head layout of an attention layer; ``n_kv_head < n_head`` is grouped-query attention."""

    n_head: int
    n_kv_head: int
    head_dim: int


class Attention(Module):
    """Multi-head (or grouped-query) self-attention with a fused QKV projection.

    The one QKV matmul and the one output matmul keep the MPC round count per layer low.
    The query columns of ``qkv`` carry the 1/sqrt(head_dim) score scale (build them with
    :meth:`from_projections`), which saves a fixed-point truncation of every score.
    """

    def __init__(self, qkv: Linear, out: Linear, shape: AttentionShape):
        self.qkv = qkv
        self.out = out
        self.shape = shape

    @classmethod
    def from_projections(cls, qkv: Linear, out: Linear, shape: AttentionShape) -> Attention:
        """From plaintext projections, folding the score scale into the query columns."""
        scale = torch.ones(qkv.weight.shape[1], dtype=qkv.weight.dtype, device=qkv.weight.device)
        scale[: shape.n_head * shape.head_dim] = 1.0 / math.sqrt(shape.head_dim)
        bias = None if qkv.bias is None else qkv.bias * scale
        return cls(Linear(qkv.weight * scale, bias), out, shape)

    def __call__(
        self,
        ops: Backend,
        x: TensorLike,
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        norm: Norm | None = None,
        projected: TensorLike | None = None,
    ) -> TensorLike:
        """``x`` (batch, seq, dim) -> (batch, seq, dim).

        ``mask`` broadcasts to the scores (batch, heads, seq, keys); ``cache`` receives this
        step's keys and values; ``rope`` is the public (cos, sin) pair for these positions;
        ``norm`` is the pre-norm applied to ``x`` first, fused with the QKV projection;
        ``projected`` is the QKV projection of ``x`` when it was made elsewhere (a post-norm).
        """
        s = self.shape
        batch, seq = x.shape[0], x.shape[1]
        q_width, kv_width = s.n_head * s.head_dim, s.n_kv_head * s.head_dim
        rotary = None if projected is not None else self._rotary_in_norm(norm, rope)
        if rotary is not None:
            qkv = norm(ops, x, then=self.qkv, rotary=rotary)
        else:
            qkv = _project(ops, x, self.qkv, norm) if projected is None else projected
        q = self._heads(qkv[..., :q_width], batch, seq, s.n_head)
        k = self._heads(qkv[..., q_width : q_width + kv_width], batch, seq, s.n_kv_head)
        v = self._heads(qkv[..., q_width + kv_width :], batch, seq, s.n_kv_head)
        if rope is not None and rotary is None:
            q, k = self._rotate(ops, q, k, rope)
        if cache is not None:
            k, v = cache.append(ops, k, v)
        k = self._repeat_kv(k)
        v = self._repeat_kv(v)
        # MPC: e @ v (and for one query row its projection) beside the row sums' reciprocal.
        return self.out.add_bias(ops.attention(q, k, v, mask, out=self.out.weight))

    def _rotary_in_norm(
        self, norm: Norm | None, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> RotaryColumns | None:
        """RoPE for the pre-norm to apply to its QKV product, where it can: a plain RMSNorm
        without gain feeding a QKV projection without bias (LLaMA).  MPC then rotates beside
        the norm's bracket (:mod:`veil.protocols.approx.rotary`): 2 rounds fewer per layer.
        A family that overrides :meth:`_rotate` rotates after the projection instead."""
        fusable = (
            rope is not None
            and type(norm) is RMSNorm
            and norm.weight is None
            and self.qkv.bias is None
            and type(self)._rotate is Attention._rotate
        )
        if not fusable:
            return None
        s = self.shape
        return RotaryColumns(rope[0], rope[1], s.n_head + s.n_kv_head, s.head_dim)

    def _rotate(
        self, ops: Backend, q: TensorLike, k: TensorLike, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[TensorLike, TensorLike]:
        """Queries and keys rotated in one go: one truncation per layer in MPC.

        A family that transforms queries and keys before RoPE (Gemma 3's norms) overrides this.
        """
        qk = apply_rotary(ops, ops.cat([q, k], dim=1), *rope)
        return qk[:, : self.shape.n_head], qk[:, self.shape.n_head :]

    def _heads(self, t: TensorLike, batch: int, seq: int, n: int) -> TensorLike:
        return t.reshape(batch, seq, n, self.shape.head_dim).transpose(1, 2)

    def _repeat_kv(self, t: TensorLike) -> TensorLike:
        """Share each key/value head among ``n_head // n_kv_head`` query heads."""
        groups = self.shape.n_head // self.shape.n_kv_head
        if groups == 1:
            return t
        batch, n_kv, keys, dim = t.shape
        return (
            t.unsqueeze(2)
            .expand(batch, n_kv, groups, keys, dim)
            .reshape(batch, n_kv * groups, keys, dim)
        )


def causal_mask(seq: int, past: int = 0) -> torch.Tensor:
    """(seq, past + seq) bool: query i (at position past + i) sees keys 0 .. past + i."""
    keys = torch.arange(past + seq)
    queries = torch.arange(past, past + seq)
    return keys[None, :] <= queries[:, None]


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, 1, 1, keys) bool from a (batch, keys) 0/1 attention mask: padded keys hidden."""
    return attention_mask.bool()[:, None, None, :]
