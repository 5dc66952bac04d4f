"""Backends: where the model code's nonlinear work happens.

The models in :mod:`veil.nn` touch activations only through Python operators (``+``, ``-``,
``*``, ``@``, reshapes, public indexing, ``.sum``) and through a backend object, by
convention called ``ops``.  :class:`Backend` lists every call the models make, so a
backend is complete when it implements this protocol:

- :class:`ExactBackend`: float torch with the exact functions (matches Hugging Face);
- :class:`ApproxBackend`: float torch with the float twins of the MPC protocols
  (:mod:`veil.protocols.approx`), so approximation error can be measured apart from protocol
  error;
- the MPC backend (in :mod:`veil.protocols`): the same calls on secret shares.

Token ids enter through :meth:`Backend.private_ids` and results leave through
:meth:`Backend.reveal`; a plaintext backend passes both through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from veil.protocols.approx.rotary import RotaryColumns

TensorLike = Any
"""A float tensor in plaintext backends, a secret share in the MPC backend."""


class Backend(Protocol):
    """Every nonlinear or data-dependent operation the models ask of an execution backend."""

    def private_ids(self, ids: torch.Tensor) -> TensorLike:
        """The client's token ids (LongTensor) as this backend holds them."""

    def reveal(self, x: TensorLike) -> torch.Tensor:
        """Open ``x`` to the client; the only way a result leaves the backend."""

    def cat(self, xs: Sequence[TensorLike], dim: int) -> TensorLike:
        """Concatenate along ``dim`` (no arithmetic, no communication)."""

    def gelu(self, x: TensorLike, approximate: str = "none") -> TensorLike:
        """GeLU; ``approximate`` ("none" = erf, "tanh") names the exact reference form."""

    def silu(self, x: TensorLike) -> TensorLike:
        """SiLU, x * sigmoid(x)."""

    def tanh(self, x: TensorLike) -> TensorLike:
        """Hyperbolic tangent (BERT's pooler)."""

    def softmax(self, x: TensorLike, dim: int = -1, mask: torch.Tensor | None = None) -> TensorLike:
        """Softmax over ``dim``; ``mask`` is a public bool tensor broadcastable to ``x``,
        True = keep, False = probability 0."""

    def attend(self, scores: TensorLike, v: TensorLike, mask: torch.Tensor | None = None) -> TensorLike:
        """``softmax(scores, mask) @ v`` over the last dim of the scores (attention's values)."""

    def attention(
        self, q: TensorLike, k: TensorLike, v: TensorLike, mask: torch.Tensor | None = None,
        out: TensorLike | None = None,
    ) -> TensorLike:
        """``softmax(q @ k^T, mask) @ v`` for queries (batch, heads, rows, d) and keys (batch,
        heads, keys, d); with ``out`` (heads * d, m) the heads side by side times ``out``:
        (batch, rows, m).  MPC starts the max from the scores' untruncated product and, for
        one query row, folds the projection into the softmax's last product."""

    def layernorm(
        self,
        x: TensorLike,
        weight: TensorLike | None,
        bias: TensorLike | None,
        eps: float,
        then: TensorLike | None = None,
    ) -> TensorLike:
        """LayerNorm over the last dim; ``weight=None, bias=None``: no affine step (folded).

        ``then``: a (dim, out) weight the result is multiplied by (the linear layer the norm
        feeds); MPC computes that matmul inside the norm, 2 rounds sooner."""

    def layernorm_projected(
        self, x: TensorLike, weight: TensorLike | None, bias: TensorLike | None, eps: float,
        then: TensorLike,
    ) -> tuple[TensorLike, TensorLike]:
        """A post-norm feeding a linear layer: (y, y @ then) for y = layernorm(x); MPC makes
        both in the norm's last product level, 2 rounds sooner than the matmul after it."""

    def rmsnorm(
        self, x: TensorLike, weight: TensorLike | None, eps: float, then: TensorLike | None = None,
        rotary: RotaryColumns | None = None,
    ) -> TensorLike:
        """RMSNorm over the last dim; ``weight=None``: no gain (folded into the next layer);
        ``then`` as for :meth:`layernorm`."""

    def embedding(self, ids: TensorLike, table: TensorLike) -> TensorLike:
        """Rows ``table[ids]`` for (possibly secret) integer ids: (..., ) -> (..., dim)."""

    def embedding_onehot(self, onehot: TensorLike, table: TensorLike) -> TensorLike:
        """``onehot @ table`` for a 0/1 one-hot (..., vocab); exact, no fixed-point truncation."""

    def argmax(self, x: TensorLike) -> tuple[TensorLike, TensorLike]:
        """Argmax over the last dim: (one-hot (..., n), index (...))."""

    def sample(
        self, x: TensorLike, temperature: float, top_k: int | None, top_p: float | None
    ) -> tuple[TensorLike, TensorLike]:
        """A token drawn from softmax(x / T) over the last dim, restricted to the top_k
        largest and to the top_p nucleus (None: no restriction): (one-hot, index)."""


def _then(y: torch.Tensor, then: torch.Tensor | None) -> torch.Tensor:
    """A norm's result times the weight of the linear layer it feeds, if one is given."""
    return y if then is None else y @ then


def _rotated(y: torch.Tensor, rotary: RotaryColumns | None) -> torch.Tensor:
    """RoPE on a projection's query and key columns, if asked for (float)."""
    return y if rotary is None else rotary.apply(y).to(y.dtype)


class ExactBackend:
    """Float torch with the exact functions; the reference every other backend is held to.

    ``generator`` seeds the plaintext draws of :meth:`sample` (reference runs only: the
    MPC backend draws jointly from the parties' AES-CTR PRGs).
    """

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def private_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def reveal(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def cat(self, xs: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
        return torch.cat(list(xs), dim=dim)

    def gelu(self, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        return F.gelu(x, approximate=approximate)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)

    def tanh(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def softmax(
        self, x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mask is not None:
            x = x.masked_fill(~mask, float("-inf"))
        return torch.softmax(x, dim=dim)

    def attend(self, scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.softmax(scores, -1, mask) @ v

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        y = self.attend(q @ k.transpose(-2, -1), v, mask)
        if out is None:
            return y
        batch, heads, rows, d = y.shape
        return y.transpose(1, 2).reshape(batch, rows, heads * d) @ out

    def layernorm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        then: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return _then(F.layer_norm(x, (x.shape[-1],), weight, bias, eps), then)

    def layernorm_projected(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        then: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.layernorm(x, weight, bias, eps)
        return y, y @ then

    def rmsnorm(
        self, x: torch.Tensor, weight: torch.Tensor | None, eps: float, then: torch.Tensor | None = None,
        rotary: RotaryColumns | None = None,
    ) -> torch.Tensor:
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return _rotated(_then(normed if weight is None else weight * normed, then), rotary)

    def embedding(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return table[ids]

    def embedding_onehot(self, onehot: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return onehot @ table

    def argmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = x.argmax(dim=-1)
        onehot = F.one_hot(index, x.shape[-1]).to(x.dtype)
        return onehot, index

    def sample(
        self, x: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from veil.protocols.approx.sampling import inverse_cdf_twin, sampling_probabilities_exact

        probs = sampling_probabilities_exact(x, temperature, top_k, top_p)
        return self._draw(lambda u: inverse_cdf_twin(probs, u), x)

    def _draw(
        self, onehot_for: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(one-hot, index) of the token that ``onehot_for`` picks for fresh uniforms."""
        u = torch.rand(x.shape[:-1], generator=self.generator, dtype=torch.float64)
        onehot = onehot_for(u)
        return onehot.to(x.dtype), onehot.argmax(-1)


class ApproxBackend(ExactBackend):
    """Float torch computing each nonlinearity with the float twin of its MPC protocol.

    Each twin is given to the constructor with the signature of the method it replaces
    (``gelu`` and ``silu``, ``tanh``: one tensor; ``softmax(x, mask)`` over the last dim;
    ``attend(scores, v, mask)`` = softmax(scores) @ v (without it: ``softmax``, then @ v);
    ``layernorm(x, weight, bias, eps)``; ``rmsnorm(x, weight, eps)``;
    ``sample(x, u, temperature, top_k, top_p)`` -> one-hot, for uniforms u); one left out is
    computed exactly, so ``ApproxBackend()`` equals :class:`ExactBackend`.  :meth:`puma`
    takes the twins of :mod:`veil.protocols.approx`.  GeLU has one approximation for both
    reference forms, as in PUMA.  Results come back in the input's dtype (the twins compute
    in float64).  Embedding and argmax are exact in MPC too, so they are not replaced.
    """

    def __init__(
        self,
        *,
        gelu: Callable[[torch.Tensor], torch.Tensor] | None = None,
        silu: Callable[[torch.Tensor], torch.Tensor] | None = None,
        tanh: Callable[[torch.Tensor], torch.Tensor] | None = None,
        softmax: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
        layernorm: Callable[..., torch.Tensor] | None = None,
        rmsnorm: Callable[..., torch.Tensor] | None = None,
        sample: Callable[..., torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__(generator)
        self._gelu = gelu
        self._silu = silu
        self._tanh = tanh
        self._softmax = softmax
        self._attend = attend
        self._layernorm = layernorm
        self._rmsnorm = rmsnorm
        self._sample = sample

    @classmethod
    def puma(
        cls,
        norm_headroom_bits: int = 0,
        generator: torch.Generator | None = None,
        **overrides: Callable[..., torch.Tensor],
    ) -> ApproxBackend:
        """The float twins of the MPC protocols (PUMA's approximations, fixed-point rounded).

        ``norm_headroom_bits`` widens the LayerNorm/RMSNorm input range by that many bits
        (for models with massive activations, see :mod:`veil.protocols.approx.layernorm`);
        ``generator`` seeds the draws of :meth:`sample`; ``overrides`` replace single twins.
        """
        from veil.protocols.approx.gelu import gelu_twin
        from veil.protocols.approx.layernorm import layernorm_twin, rmsnorm_twin
        from veil.protocols.approx.sampling import sample_twin
        from veil.protocols.approx.silu import silu_twin
        from veil.protocols.approx.softmax import softmax_matmul_twin, softmax_twin
        from veil.protocols.approx.tanh import tanh_twin

        twins: dict[str, Callable[..., torch.Tensor]] = {
            "gelu": gelu_twin,
            "silu": silu_twin,
            "tanh": tanh_twin,
            "softmax": softmax_twin,
            "attend": softmax_matmul_twin,
            "layernorm": partial(layernorm_twin, headroom_bits=norm_headroom_bits),
            "rmsnorm": partial(rmsnorm_twin, headroom_bits=norm_headroom_bits),
            "sample": sample_twin,
        }
        if "softmax" in overrides and "attend" not in overrides:
            del twins["attend"]  # attention then takes the overriding softmax, then @ v
        return cls(generator=generator, **(twins | overrides))

    def gelu(self, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        if self._gelu is None:
            return super().gelu(x, approximate)
        return self._gelu(x).to(x.dtype)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        return super().silu(x) if self._silu is None else self._silu(x).to(x.dtype)

    def tanh(self, x: torch.Tensor) -> torch.Tensor:
        return super().tanh(x) if self._tanh is None else self._tanh(x).to(x.dtype)

    def softmax(
        self, x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self._softmax is None:
            return super().softmax(x, dim, mask)
        if dim not in (-1, x.dim() - 1):
            raise ValueError("the softmax protocol works over the last dim only")
        return self._softmax(x, mask).to(x.dtype)

    def attend(self, scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self._attend is None:
            return super().attend(scores, v, mask)
        return self._attend(scores, v, mask).to(scores.dtype)

    def layernorm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        then: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self._layernorm is None:
            return super().layernorm(x, weight, bias, eps, then)
        return _then(self._layernorm(x, weight, bias, eps).to(x.dtype), then)

    def rmsnorm(
        self, x: torch.Tensor, weight: torch.Tensor | None, eps: float, then: torch.Tensor | None = None,
        rotary: RotaryColumns | None = None,
    ) -> torch.Tensor:
        if self._rmsnorm is None:
            return super().rmsnorm(x, weight, eps, then, rotary)
        return _rotated(_then(self._rmsnorm(x, weight, eps).to(x.dtype), then), rotary)

    def sample(
        self, x: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        twin = self._sample
        if twin is None:
            return super().sample(x, temperature, top_k, top_p)
        return self._draw(lambda u: twin(x, u, temperature, top_k, top_p), x)
