"""A weight's share that lives in the party's store until the model code touches it.

:class:`StreamedShare` is an :class:`~veil.mpc.arith.ArithShare` whose ``data`` is fetched
from the party's :class:`~veil.mpc.prefetch.Prefetcher` on access instead of being held:
``x @ w`` reads ``w.data`` once, inside the product, so the pair is resident only while
the product runs (and while the loader holds it ahead).  Its shape and scale are public
and known without loading.  The protocols see an ordinary share: the same pair, so the same
messages and results as a share held in memory, bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from veil.mpc.arith import ArithShare

if TYPE_CHECKING:
    from veil.mpc.party import Party
    from veil.mpc.prefetch import Prefetcher


class StreamedShare(ArithShare):
    """Party ``party``'s pair of weight ``index``, loaded through ``prefetcher`` when used."""

    __slots__ = ("_index", "_prefetcher", "_shape")

    def __init__(
        self,
        party: Party,
        prefetcher: Prefetcher,
        index: int,
        shape: tuple[int, ...],
        frac_bits: int,
    ):
        # ArithShare's own slot ``data`` stays unset: the property below stands in for it.
        self.party = party
        self.frac_bits = frac_bits
        self._prefetcher = prefetcher
        self._index = index
        self._shape = torch.Size(shape)

    @property
    def data(self) -> torch.Tensor:  # type: ignore[override]
        return self._prefetcher.get(self._index)

    @property
    def shape(self) -> torch.Size:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    def __repr__(self) -> str:
        return (
            f"StreamedShare(rank={self.party.rank}, weight={self._index}, "
            f"shape={tuple(self._shape)}, frac_bits={self.frac_bits})"
        )
