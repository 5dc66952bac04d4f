"""Bit-sliced circuits: the MSB of a sum, and the zero test.

Both reduce the 64 bits of each element to one by a tree of ANDs.  Instead of keeping
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
from veil.protocols.boolean import and_shares

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


def _unslice(row: torch.Tensor, n: int, shape: torch.Size, party) -> BoolShare:
    """One row (2, blocks) of bits back to one element per word (bit 0)."""
    bits = (row.unsqueeze(-1) >> torch.arange(WORD, device=row.device)) & 1
    return BoolShare(party, bits.reshape(2, -1)[:, :n].reshape(2, *shape))


def _and(party, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    (z,) = and_shares([BoolShare(party, x)], [BoolShare(party, y)])
    return z.data


def msb_of_sum(a: BoolShare, b: BoolShare) -> BoolShare:
    """Bit 63 of a + b, in bit 0 of each element's word (7 AND rounds).

    msb = a_63 ^ b_63 ^ c_63, where the carry c_63 is the generate signal of bits 0..62
    under the prefix operator (G, P)_hi o (G, P)_lo = (G_hi ^ P_hi & G_lo, P_hi & P_lo),
    evaluated as a balanced tree on bit-sliced rows (bit 63 gets the neutral (0, 1)).
    Bytes per element per party: 63/64 words for g = a & b, then 1, 1/2, 1/4, 1/8,
    1/16 and 1/64 words for the six levels: about 23.5 bytes.
    """
    party = a.party
    rows_a, n = _sliced(a)
    rows_b, _ = _sliced(b)
    low_a, low_b = rows_a[..., : WORD - 1], rows_b[..., : WORD - 1]
    g = _and(party, low_a, low_b)
    p = low_a ^ low_b
    neutral_p = torch.zeros_like(rows_a[..., :1])
    if party.rank == 0:
        neutral_p[0] = -1  # the public all-ones row, in component 0
    elif party.rank == 2:
        neutral_p[1] = -1
    g = torch.cat([g, torch.zeros_like(neutral_p)], dim=-1)
    p = torch.cat([p, neutral_p], dim=-1)
    while g.shape[-1] > 2:
        half = g.shape[-1] // 2
        g_lo, g_hi, p_lo, p_hi = g[..., 0::2], g[..., 1::2], p[..., 0::2], p[..., 1::2]
        both = _and(party, torch.cat([p_hi, p_hi], dim=-1), torch.cat([g_lo, p_lo], dim=-1))
        g, p = g_hi ^ both[..., :half], both[..., half:]
    carry = g[..., 1] ^ _and(party, p[..., 1], g[..., 0])
    top = rows_a[..., WORD - 1] ^ rows_b[..., WORD - 1] ^ carry
    return _unslice(top, n, a.shape, party)


def all_ones(words: BoolShare) -> BoolShare:
    """Bit 0 is the AND of all 64 bits of each word (6 rounds, ~8 bytes per element)."""
    rows, n = _sliced(words)
    while rows.shape[-1] > 1:
        half = rows.shape[-1] // 2
        rows = _and(words.party, rows[..., :half], rows[..., half:])
    return _unslice(rows[..., 0], n, words.shape, words.party)
