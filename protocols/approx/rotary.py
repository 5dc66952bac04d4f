"""RoPE on the query and key columns of a fused QKV projection, for a norm to apply beside its bracket.

Formula (rotate_half form, per head of width d, half = d / 2, public tables cos and sin per
position): out_j = x_j cos_j + s_j x_{(j + half) mod d} sin_j with s_j = -1 for j < half and
+1 otherwise; the value columns after the rotated heads pass through.  A row's rotation is
linear, so it commutes with the per-row factor a norm multiplies by last:
R(g (x @ W)) = g R(x @ W).  :func:`veil.protocols.approx.rsqrt_product.rsqrt_product_of_components`
therefore rotates x @ W while its bracket still runs: RoPE leaves the critical path (2 rounds
per layer before, as a product by the public tables and its truncation after the norm).
Source: RoFormer (arXiv 2104.09864), as LLaMA applies it.

Precision: cos and sin are encoded with ROTARY_BITS = 14 fractional bits (error 2^-15 each,
3e-5 relative to the rotated value), the product truncated back to its input's bits.
Valid range: |x @ W| < 2^(62 - frac - 14) for input with ``frac`` fractional bits (2^23 at a
norm's f + 7 = 25).  Cost: one truncation per rotated element (21.3 bytes per party) inside a
truncation the norm makes anyway: no round.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROTARY_BITS = 14


@dataclass(frozen=True)
class RotaryColumns:
    """The public RoPE tables for the first ``heads`` heads of a fused projection's output.

    ``cos``, ``sin``: (seq, head_dim) or (batch, seq, head_dim), for outputs (batch, seq,
    width) whose first ``heads * head_dim`` columns are queries then keys, head by head.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    heads: int
    head_dim: int

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t[..., : self.width].reshape(*t.shape[:-1], self.heads, self.head_dim)

    def _rotated(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = self._heads(t)
        half = self.head_dim // 2
        partner = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        out = x * cos.unsqueeze(-2) + partner * sin.unsqueeze(-2)
        return out.reshape(*out.shape[:-2], self.width)

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """The rotation in float (plaintext backends)."""
        cos, sin = self.cos.to(y.dtype), self.sin.to(y.dtype)
        return torch.cat([self._rotated(y, cos, sin), y[..., self.width :]], dim=-1)

    def apply_twin(self, y: torch.Tensor, frac_bits: int | None) -> torch.Tensor:
        """Float twin of the protocol's rotation: tables with ROTARY_BITS bits, the result
        rounded to ``frac_bits`` (None: float)."""
        if frac_bits is None:
            return self.apply(y)
        cos, sin = (self.encoded(t).to(torch.float64) / 2.0**ROTARY_BITS for t in (self.cos, self.sin))
        scale = 2.0**frac_bits
        rotated = torch.round(self._rotated(y.to(torch.float64), cos, sin) * scale) / scale
        return torch.cat([rotated, y[..., self.width :].to(torch.float64)], dim=-1)

    @staticmethod
    def encoded(table: torch.Tensor) -> torch.Tensor:
        return torch.round(table.to(torch.float64) * 2.0**ROTARY_BITS).to(torch.int64)

    def component(self, ring: torch.Tensor) -> torch.Tensor:
        """This party's 3-out-of-3 component of the rotated columns from one component
        ``ring`` of the input (e.g. a replicated share's first element): ROTARY_BITS more
        fractional bits than the input, to be truncated by ROTARY_BITS."""
        cos, sin = (self.encoded(t).to(ring.device) for t in (self.cos, self.sin))
        return self._rotated(ring, cos, sin)
