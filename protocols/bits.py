"""Bit-level circuits with packing: the MSB of a sum, and the zero test.

Both reduce 64 bits to one by a tree whose levels halve the number of meaningful bits.
After each level the survivors are compacted into the low bits of the word
(:func:`compress_even_bits`, local and XOR-linear, so it applies to each share
component) and as many elements as fit travel in one 64-bit word of the AND round
(:func:`protocols.boolean.and_packed`).  The rounds stay log2(64) = 6, but the bytes
shrink geometrically: about 2 words per element over all levels instead of 6-11.
"""

from __future__ import annotations

import torch

from mpc.boolean import BoolShare, logical_right_shift
from protocols.boolean import and_packed

EVEN_BIT_MASKS = (
    (1, 0x3333333333333333),
    (2, 0x0F0F0F0F0F0F0F0F),
    (4, 0x00FF00FF00FF00FF),
    (8, 0x0000FFFF0000FFFF),
    (16, 0x00000000FFFFFFFF),
)
EVEN_BITS = 0x5555555555555555
TOP_BIT = -(1 << 63)  # bit 63 alone, as an int64
LOW_63_BITS = (1 << 63) - 1


def compress_even_bits(words: torch.Tensor) -> torch.Tensor:
    """Bit 2i of each word moves to bit i (bits 32..63 become 0); XOR-linear."""
    x = words & EVEN_BITS  # clears bit 63, so the arithmetic shifts below fill zeros
    for shift, mask in EVEN_BIT_MASKS:
        x = (x | (x >> shift)) & mask
    return x


def _even(share: BoolShare) -> BoolShare:
    return BoolShare(share.party, compress_even_bits(share.data))


def _odd(share: BoolShare) -> BoolShare:
    return BoolShare(share.party, compress_even_bits(logical_right_shift(share.data, 1)))


def carry_into_top_bit(a: BoolShare, b: BoolShare) -> BoolShare:
    """Bit 0 of the result: the carry into bit 63 of a + b (7 AND rounds).

    Generate/propagate pairs (g, p) = (a & b, a ^ b) of bits 0..62 are combined by the
    prefix operator (G, P)_hi o (G, P)_lo = (G_hi ^ P_hi & G_lo, P_hi & P_lo) in a
    balanced tree; bit 63 is set to the neutral (g, p) = (0, 1).
    Bytes per element per party: 8 (g) + 8 + 4 + 2 + 1 + 0.5 + 0.125 (tree) = 23.6.
    """
    g = (a & b) & LOW_63_BITS
    p = ((a ^ b) & LOW_63_BITS) ^ TOP_BIT
    width = 64
    while width > 1:
        half = width // 2
        g_lo, g_hi, p_lo, p_hi = _even(g), _odd(g), _even(p), _odd(p)
        if half == 1:
            return g_hi ^ and_packed(p_hi, g_lo, 1)
        both = and_packed(p_hi ^ (p_hi << half), g_lo ^ (p_lo << half), width)
        g = g_hi ^ (both & ((1 << half) - 1))
        p = both >> half
        width = half
    raise AssertionError("unreachable")


def msb_of_sum(a: BoolShare, b: BoolShare) -> BoolShare:
    """Bit 63 of a + b, in bit 0: a_63 ^ b_63 ^ carry (7 AND rounds, ~24 bytes)."""
    return (a ^ b).bit(63) ^ carry_into_top_bit(a, b)


def all_ones(words: BoolShare) -> BoolShare:
    """Bit 0 is the AND of all 64 bits of each word (6 rounds, ~8 bytes per element)."""
    width = 64
    while width > 1:
        half = width // 2
        words = and_packed(words & ((1 << half) - 1), words >> half, half)
        width = half
    return words
