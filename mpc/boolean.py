"""BoolShare: replicated XOR sharing of 64-bit words.

x = x_0 ^ x_1 ^ x_2; party i holds (x_i, x_{i+1}).  Bit k of an element is bit k of
its int64 word, so one AND round works on all 64 bits of every element at once.
XOR, NOT, shifts and AND with a public mask are local; AND of two shares costs one
round and one word per element per party (:func:`veil.protocols.boolean.and_shares`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from veil.mpc.shape_ops import ShapeOps, aligned_pair

if TYPE_CHECKING:
    from veil.mpc.party import Party

ALL_ONES = -1


def logical_right_shift(words: torch.Tensor, shift: int) -> torch.Tensor:
    """>> that fills with zeros (torch's >> on int64 is arithmetic)."""
    if shift == 0:
        return words
    return (words >> shift) & ((1 << (64 - shift)) - 1)


class BoolShare(ShapeOps):
    """A secret tensor of 64-bit words, XOR-shared among three parties."""

    __slots__ = ("data", "party")

    def __init__(self, party: Party, data: torch.Tensor):
        if data.dtype != torch.int64 or data.dim() < 1 or data.shape[0] != 2:
            raise ValueError("BoolShare data must be an int64 tensor of shape (2, ...)")
        self.party = party
        self.data = data

    def _like(self, data: torch.Tensor) -> BoolShare:
        return BoolShare(self.party, data)

    def __repr__(self) -> str:
        return f"BoolShare(rank={self.party.rank}, shape={tuple(self.shape)})"

    @staticmethod
    def from_component(party: Party, component: int, value: torch.Tensor) -> BoolShare:
        """Words known to the two holders of ``component``, placed in that component."""
        zeros = torch.zeros_like(value)
        own = value if party.rank == component else zeros
        nxt = value if (party.rank + 1) % 3 == component else zeros
        return BoolShare(party, torch.stack((own, nxt)))

    @staticmethod
    def from_public(party: Party, words: torch.Tensor) -> BoolShare:
        return BoolShare.from_component(party, 0, torch.as_tensor(words, dtype=torch.int64).to(party.device))

    def _xor_public(self, words: torch.Tensor | int) -> BoolShare:
        words = torch.as_tensor(words, dtype=torch.int64, device=self.device)
        shape = torch.broadcast_shapes(self.shape, words.shape)
        data = self.data.expand(2, *shape).clone()
        if self.party.rank == 0:
            data[0] ^= words
        elif self.party.rank == 2:
            data[1] ^= words
        return self._like(data)

    def __xor__(self, other: BoolShare | torch.Tensor | int) -> BoolShare:
        if isinstance(other, BoolShare):
            da, db = aligned_pair(self, other)
            return self._like(da ^ db)
        return self._xor_public(other)

    __rxor__ = __xor__

    def __invert__(self) -> BoolShare:
        return self._xor_public(ALL_ONES)

    def __and__(self, other: BoolShare | torch.Tensor | int) -> BoolShare:
        if isinstance(other, BoolShare):
            from veil.protocols.boolean import and_shares

            return and_shares([self], [other])[0]
        return self._like(self.data & torch.as_tensor(other, dtype=torch.int64, device=self.device))

    __rand__ = __and__

    def __or__(self, other: BoolShare) -> BoolShare:
        """a | b = a ^ b ^ (a & b): one AND round."""
        return self ^ other ^ (self & other)

    def __lshift__(self, shift: int) -> BoolShare:
        return self._like(self.data << shift)

    def __rshift__(self, shift: int) -> BoolShare:
        """Logical (zero-filling) right shift."""
        return self._like(logical_right_shift(self.data, shift))

    def bit(self, k: int) -> BoolShare:
        """Bit k of every word, moved to bit 0."""
        return (self >> k) & 1

    def reveal(self) -> torch.Tensor:
        """Open to every party: the XOR of the three components (1 round)."""
        from veil.mpc.sharing import reveal_bool

        return reveal_bool(self)
