"""Backends: where the model code's nonlinear work happens.

The models in :mod:`nn` touch activations only through Python operators (``+``, ``-``,
``*``, ``@``, reshapes, public indexing, ``.sum``) and through a backend object, by
convention called ``ops``.  :class:`Backend` lists every call the models make, so a
backend is complete when it implements this protocol:

- :class:`ExactBackend`: float torch with the exact functions (matches Hugging Face);
- :class:`ApproxBackend`: float torch with the float twins of the MPC approximations, so
  approximation error can be measured apart from protocol error;
- the MPC backend (in :mod:`protocols`): the same calls on secret shares.

Token ids enter through :meth:`Backend.private_ids` and results leave through
:meth:`Backend.reveal`; a plaintext backend passes both through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

TensorLike = Any
"""A float tensor in plaintext backends, a secret share in the MPC backend."""

UnaryFn = Callable[[torch.Tensor], torch.Tensor]


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

    def layernorm(
        self, x: TensorLike, weight: TensorLike, bias: TensorLike, eps: float
    ) -> TensorLike:
        """LayerNorm over the last dim."""

    def rmsnorm(self, x: TensorLike, weight: TensorLike, eps: float) -> TensorLike:
        """RMSNorm over the last dim."""

    def embedding(self, ids: TensorLike, table: TensorLike) -> TensorLike:
        """Rows ``table[ids]`` for (possibly secret) integer ids: (..., ) -> (..., dim)."""

    def embedding_onehot(self, onehot: TensorLike, table: TensorLike) -> TensorLike:
        """``onehot @ table`` for a 0/1 one-hot (..., vocab); exact, no fixed-point truncation."""

    def argmax(self, x: TensorLike) -> tuple[TensorLike, TensorLike]:
        """Argmax over the last dim: (one-hot (..., n), index (...))."""


class ExactBackend:
    """Float torch with the exact functions; the reference every other backend is held to."""

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

    def layernorm(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def embedding(self, ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return table[ids]

    def embedding_onehot(self, onehot: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return onehot @ table

    def argmax(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = x.argmax(dim=-1)
        onehot = F.one_hot(index, x.shape[-1]).to(x.dtype)
        return onehot, index


def _exact_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


def _in_dtype(fn: UnaryFn) -> UnaryFn:
    """``fn`` with its result cast back to its argument's dtype."""

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        return fn(x).to(x.dtype)

    return wrapped


class ApproxBackend(ExactBackend):
    """Float torch computing each nonlinearity the way the MPC protocols do.

    Softmax, LayerNorm and RMSNorm are composed from the same primitives as their
    protocols (max-subtract, ``exp``, one ``reciprocal`` per row; one ``rsqrt`` per row),
    and GeLU, SiLU and tanh are taken whole.  Each primitive is a float function given to
    the constructor (the float twin of a protocol); one left out is computed exactly, so
    ``ApproxBackend()`` equals :class:`ExactBackend` up to float rounding, and
    :meth:`puma` uses the twins of :mod:`protocols.approx`.  GeLU has one approximation for
    both reference forms, as in PUMA.  Results come back in the input's dtype (the twins
    compute in float64).
    """

    def __init__(
        self,
        *,
        exp: UnaryFn = torch.exp,
        reciprocal: UnaryFn = torch.reciprocal,
        rsqrt: UnaryFn = torch.rsqrt,
        gelu: UnaryFn = _exact_gelu,
        silu: UnaryFn = F.silu,
        tanh: UnaryFn = torch.tanh,
    ):
        self._exp = _in_dtype(exp)
        self._reciprocal = _in_dtype(reciprocal)
        self._rsqrt = _in_dtype(rsqrt)
        self._gelu = _in_dtype(gelu)
        self._silu = _in_dtype(silu)
        self._tanh = _in_dtype(tanh)

    @classmethod
    def puma(cls, **overrides: UnaryFn) -> ApproxBackend:
        """The float twins of the MPC protocols (PUMA's approximations, fixed-point rounded).

        ``overrides`` replace single primitives, e.g. a twin with another input window.
        tanh has no protocol yet and stays exact.
        """
        from protocols.approx.exp import exp_twin
        from protocols.approx.gelu import gelu_twin
        from protocols.approx.reciprocal import reciprocal_twin
        from protocols.approx.rsqrt import rsqrt_twin
        from protocols.approx.silu import silu_twin

        twins: dict[str, UnaryFn] = {
            "exp": exp_twin,
            "reciprocal": reciprocal_twin,
            "rsqrt": rsqrt_twin,
            "gelu": gelu_twin,
            "silu": silu_twin,
        }
        return cls(**(twins | overrides))

    def gelu(self, x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        return self._gelu(x)

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        return self._silu(x)

    def tanh(self, x: torch.Tensor) -> torch.Tensor:
        return self._tanh(x)

    def softmax(
        self, x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mask is None:
            mask = torch.ones((), dtype=torch.bool)
        x = x - x.masked_fill(~mask, float("-inf")).amax(dim=dim, keepdim=True)
        e = self._exp(x.masked_fill(~mask, 0.0)) * mask
        return e * self._reciprocal(e.sum(dim=dim, keepdim=True))

    def layernorm(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)
        variance = (centred * centred).mean(-1, keepdim=True)
        return centred * self._rsqrt(variance + eps) * weight + bias

    def rmsnorm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return weight * (x * self._rsqrt((x * x).mean(-1, keepdim=True) + eps))
