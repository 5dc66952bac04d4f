"""Bit-sliced circuits: the zero test, and the rows the MSB's carry tree works on.

The zero test reduces the 64 bits of each element to one by a tree of ANDs.  Instead of keeping
each element in its own word (where every AND round costs a whole word per element,
however few bits are still alive), the words are first *bit-sliced*: blocks of 64
elements are transposed as 64x64 bit matrices, so that word i of a block holds bit i of
all 64 elements.  Transposition is XOR-linear, so each party applies it to its share
components locally.  A tree level is then a few ANDs between whole rows, and a level
that keeps r rows sends r / 64 words per element: 1 + 1/2 + 1/4 + ... instead of 6 full
words.  The rounds stay log2(64) = 6; local work is one transpose per input.
"""

from __future__ import annotations

import torch

from veil.mpc.boolean import BoolShare
from veil.mpc.lockstep import RoundLink, Steps
from veil.protocols.boolean import and_shares, and_shares_steps

WORD = 64
TRANSPOSE_STAGES = (
    (32, 0x00000000FFFFFFFF),
    (16, 0x0000FFFF0000FFFF),
    (8, 0x00FF00FF00FF00FF),
    (4, 0x0F0F0F0F0F0F0F0F),
    (2, 0x3333333333333333),
    (1, 0x5555555555555555),
)


def transpose_bits(blocks: torch.Tensor) -> torch.Tensor:
    """Transpose each 64x64 bit matrix of ``blocks`` (..., 64): bit i of word e -> bit e of word i.

    Recursive block swaps (Hacker's Delight §7-3), vectorised over all blocks; an
    involution.  Every mask clears the top bits, so int64's arithmetic shift is harmless.
    """
    a = blocks.clone()
    lead = a.shape[:-1]
    for j, mask in TRANSPOSE_STAGES:
        view = a.view(*lead, WORD // (2 * j), 2, j)
        lo, hi = view[..., 0, :], view[..., 1, :]
        t = ((lo >> j) ^ hi) & mask
        hi ^= t
        lo ^= t << j
    return a


def _sliced(share: BoolShare) -> tuple[torch.Tensor, int]:
    """(2, blocks, 64) rows of the bit-sliced share, and the element count."""
    flat = share.data.reshape(2, -1)
    n = flat.shape[1]
    padded = torch.nn.functional.pad(flat, (0, (-n) % WORD))
    return transpose_bits(padded.reshape(2, -1, WORD)), n


def unslice(row: torch.Tensor, n: int, shape: torch.Size, party) -> BoolShare:
    """One row (2, blocks) of bits back to one element per word (bit 0)."""
    bits = (row.unsqueeze(-1) >> torch.arange(WORD, device=row.device)) & 1
    return BoolShare(party, bits.reshape(2, -1)[:, :n].reshape(2, *shape))


def and_rows(party, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    (z,) = and_shares([BoolShare(party, x)], [BoolShare(party, y)])
    return z.data


def and_rows_steps(link: RoundLink, x: torch.Tensor, y: torch.Tensor) -> Steps[torch.Tensor]:
    """:func:`and_rows` as steps (:mod:`veil.mpc.lockstep`)."""
    (z,) = yield from and_shares_steps(link, [BoolShare(link.party, x)], [BoolShare(link.party, y)])
    return z.data


def all_ones(words: BoolShare) -> BoolShare:
    """Bit 0 is the AND of all 64 bits of each word (6 rounds, ~8 bytes per element)."""
    rows, n = _sliced(words)
    while rows.shape[-1] > 1:
        half = rows.shape[-1] // 2
        rows = and_rows(words.party, rows[..., :half], rows[..., half:])
    return unslice(rows[..., 0], n, words.shape, words.party)
