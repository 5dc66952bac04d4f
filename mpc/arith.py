"""ArithShare: 2-out-of-3 replicated additive sharing over Z_2^64.

x = x_0 + x_1 + x_2 (mod 2^64); party i holds (x_i, x_{i+1}) stacked in ``data``.
Any two parties can reconstruct x; any single party's pair is uniformly random.

Values are fixed point with ``frac_bits`` fractional bits: ``party.fxp.frac_bits``
for real numbers, 0 for integers (bits, token ids, one-hot vectors).  Products of two
fixed-point values are truncated back to f bits with the precise truncation of
:mod:`veil.protocols.truncation`; products with an integer operand need no truncation.

Local operations (add, public multiply, reshape, ...) cost nothing; the costs of the
interactive ones are in their protocol modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from veil.mpc.shape_ops import ShapeOps, aligned_pair

if TYPE_CHECKING:
    from veil.mpc.party import Party

Public = torch.Tensor | float | int


def _is_integer_public(value: Public) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return True
    if isinstance(value, torch.Tensor):
        return not (value.is_floating_point() or value.is_complex())
    return False


class ArithShare(ShapeOps):
    """A secret tensor, replicated-additively shared among three parties."""

    __slots__ = ("data", "frac_bits", "party")

    def __init__(self, party: Party, data: torch.Tensor, frac_bits: int):
        if data.dtype != torch.int64 or data.dim() < 1 or data.shape[0] != 2:
            raise ValueError("ArithShare data must be an int64 tensor of shape (2, ...)")
        self.party = party
        self.data = data
        self.frac_bits = frac_bits

    def _like(self, data: torch.Tensor, frac_bits: int | None = None) -> ArithShare:
        return ArithShare(self.party, data, self.frac_bits if frac_bits is None else frac_bits)

    def __repr__(self) -> str:
        return f"ArithShare(rank={self.party.rank}, shape={tuple(self.shape)}, frac_bits={self.frac_bits})"

    # -- constructors -------------------------------------------------------------
    @staticmethod
    def from_ring_public(party: Party, ring: torch.Tensor, frac_bits: int) -> ArithShare:
        """A public ring tensor as a (trivial) sharing: it sits in component 0."""
        ring = ring.to(party.device)
        zeros = torch.zeros_like(ring)
        if party.rank == 0:
            data = torch.stack((ring, zeros))
        elif party.rank == 2:
            data = torch.stack((zeros, ring))
        else:
            data = torch.stack((zeros, zeros))
        return ArithShare(party, data, frac_bits)

    @staticmethod
    def from_public(party: Party, value: Public) -> ArithShare:
        """Encode a public value (fixed point for floats, integer for integer tensors)."""
        if _is_integer_public(value):
            return ArithShare.from_ring_public(party, torch.as_tensor(value, dtype=torch.int64), 0)
        return ArithShare.from_ring_public(party, party.fxp.encode(value), party.fxp.frac_bits)

    @staticmethod
    def from_component(party: Party, component: int, value: torch.Tensor, frac_bits: int) -> ArithShare:
        """A value known to the two holders of ``component`` placed in that component.

        Component j is held by parties j (first slot) and j-1 (second slot); every party
        passes a tensor of the right shape, which only those two use.
        """
        zeros = torch.zeros_like(value)
        own = value if party.rank == component else zeros
        nxt = value if (party.rank + 1) % 3 == component else zeros
        return ArithShare(party, torch.stack((own, nxt)), frac_bits)

    # -- scale bookkeeping --------------------------------------------------------
    def _rescaled(self, frac_bits: int) -> ArithShare:
        """Exact conversion to more fractional bits (a local left shift)."""
        if frac_bits == self.frac_bits:
            return self
        if frac_bits < self.frac_bits:
            raise ValueError("reducing fractional bits needs truncation")
        return self._like(self.data << (frac_bits - self.frac_bits), frac_bits)

    def _public_ring(self, value: Public) -> tuple[torch.Tensor, int]:
        """A public operand as ring elements and its fractional bits."""
        if _is_integer_public(value):
            return torch.as_tensor(value, dtype=torch.int64, device=self.device), 0
        return self.party.fxp.encode(value, device=self.device), self.party.fxp.frac_bits

    def _add_public_ring(self, ring: torch.Tensor) -> ArithShare:
        rank = self.party.rank
        shape = torch.broadcast_shapes(self.shape, ring.shape)
        data = self.data.expand(2, *shape).clone() if tuple(shape) != tuple(self.shape) else self.data.clone()
        if rank == 0:
            data[0] += ring
        elif rank == 2:
            data[1] += ring
        return self._like(data)

    # -- linear operations (local) ----------------------------------------------------
    def __add__(self, other: ArithShare | Public) -> ArithShare:
        if isinstance(other, ArithShare):
            frac = max(self.frac_bits, other.frac_bits)
            a, b = self._rescaled(frac), other._rescaled(frac)
            da, db = aligned_pair(a, b)
            return ArithShare(self.party, da + db, frac)
        ring, frac = self._public_ring(other)
        if frac > self.frac_bits:
            return self._rescaled(frac)._add_public_ring(ring)
        return self._add_public_ring(ring << (self.frac_bits - frac))

    __radd__ = __add__

    def __neg__(self) -> ArithShare:
        return self._like(-self.data)

    def __sub__(self, other: ArithShare | Public) -> ArithShare:
        return self + (-other)

    def __rsub__(self, other: Public) -> ArithShare:
        return (-self) + other

    # -- products -----------------------------------------------------------------------
    def _finish_product(self, data: torch.Tensor, frac: int) -> ArithShare:
        """Truncate a product back to f fractional bits when it carries more."""
        product = ArithShare(self.party, data, frac)
        target = self.party.fxp.frac_bits
        if frac > target:
            from veil.protocols.truncation import truncate

            return truncate(product, frac - target)
        return product

    def __mul__(self, other: ArithShare | Public) -> ArithShare:
        if isinstance(other, ArithShare):
            from veil.protocols.multiplication import mul

            return mul(self, other)
        ring, frac = self._public_ring(other)
        return self._finish_product(self.data * ring, self.frac_bits + frac)

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> ArithShare:
        if isinstance(other, (int, float)):
            return self * (1.0 / other)
        raise TypeError("division by a secret: use protocols.approx.reciprocal")

    def __matmul__(self, other: ArithShare | torch.Tensor) -> ArithShare:
        if isinstance(other, ArithShare):
            from veil.protocols.multiplication import matmul

            return matmul(self, other)
        from veil.mpc.ring_matmul import ring_matmul

        ring, frac = self._public_ring(other)
        return self._finish_product(
            torch.stack([ring_matmul(self.data[k], ring) for k in range(2)]), self.frac_bits + frac
        )

    def __rmatmul__(self, other: torch.Tensor) -> ArithShare:
        from veil.mpc.ring_matmul import ring_matmul

        ring, frac = self._public_ring(other)
        return self._finish_product(
            torch.stack([ring_matmul(ring, self.data[k]) for k in range(2)]), self.frac_bits + frac
        )

    def square(self) -> ArithShare:
        return self * self

    # -- reductions (local) -----------------------------------------------------------
    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> ArithShare:
        if dim is None:
            return self._like(self.data.reshape(2, -1).sum(1))
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        return self._like(self.data.sum([d % self.ndim + 1 for d in dims], keepdim=keepdim))

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> ArithShare:
        total = self.sum(dim, keepdim)
        count = self.numel() // max(total.numel(), 1)
        return total * (1.0 / count)

    # -- comparisons and selection (interactive) ----------------------------------------
    def __lt__(self, other: ArithShare | Public) -> ArithShare:
        from veil.protocols.comparison import less_than

        return less_than(self, other)

    def __gt__(self, other: ArithShare | Public) -> ArithShare:
        from veil.protocols.comparison import less_than

        return less_than(other, self)

    def __le__(self, other: ArithShare | Public) -> ArithShare:
        return 1 - (self > other)

    def __ge__(self, other: ArithShare | Public) -> ArithShare:
        return 1 - (self < other)

    def eq(self, other: ArithShare | Public) -> ArithShare:
        from veil.protocols.comparison import equal

        return equal(self, other)

    def relu(self) -> ArithShare:
        from veil.protocols.select import relu

        return relu(self)

    def max(self, dim: int = -1, keepdim: bool = False) -> ArithShare:
        from veil.protocols.reductions import max_with_argmax

        value, _ = max_with_argmax(self, dim)
        return value.unsqueeze(dim) if keepdim else value

    def argmax(self, dim: int = -1) -> ArithShare:
        """One-hot (integer 0/1 share) of the first maximum along ``dim``."""
        from veil.protocols.reductions import max_with_argmax

        return max_with_argmax(self, dim)[1]

    # -- opening ----------------------------------------------------------------------------
    def reveal(self) -> torch.Tensor:
        """Open to every party (1 round, one element per party); float for fixed point."""
        from veil.mpc.sharing import reveal

        return reveal(self)

    def get_plain_text(self) -> torch.Tensor:
        """CrypTen's name for :meth:`reveal`."""
        return self.reveal()


def cat(shares: Sequence[Any], dim: int = 0) -> Any:
    """torch.cat for shares (all of one type and, for ArithShare, one scale)."""
    first = shares[0]
    if isinstance(first, ArithShare):
        frac = max(s.frac_bits for s in shares)
        shares = [s._rescaled(frac) for s in shares]
    d = dim % first.ndim + 1
    return first._like(torch.cat([s.data for s in shares], dim=d))


def stack(shares: Sequence[Any], dim: int = 0) -> Any:
    first = shares[0]
    if isinstance(first, ArithShare):
        frac = max(s.frac_bits for s in shares)
        shares = [s._rescaled(frac) for s in shares]
    d = dim % (first.ndim + 1) + 1
    return first._like(torch.stack([s.data for s in shares], dim=d))
