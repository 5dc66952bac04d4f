"""Embedding lookup of secret token ids: a secret one-hot times the secret table.

Formula: onehot[t, v] = [id_t == v], rows = onehot @ table.  The one-hot is built in two
halves: the id's low ceil(log2 vocab) bits are decomposed once per token (A2B whose adder
stops at that width: 6 rounds for 16 bits, 8 for all 64) and split into its high
and low halves (H + L = ceil(log2 vocab) bits); equality with every public value of each
half is the AND of the bits of NOT(half XOR value), a few AND rounds on words that each
carry one comparison; B2A turns the 2^H + 2^L bits into arithmetic 0/1; their outer
product over the vocabulary's (high, low) pairs (one multiplication, no truncation: both
are integers) is the full one-hot.
So the width is reduced once per token, and the per-vocabulary-entry cost is the single
outer-product multiplication (8 bytes) instead of an equality test (31.9 bytes for a
64-bit ``equal``).  The product with the fixed-point table has an integer operand, so it
needs no truncation and the rows come out exactly (bit for bit) as shared.
Source: the one-hot embedding of PUMA (arXiv 2307.12533 §4.4); the split is ours.

Valid range: ids in [0, vocab).  An id outside it is not detected (the parties cannot see
it): only its low B = ceil(log2 vocab) bits are compared, so it is read as id mod 2^B, which
selects that row if it is below vocab (another token: 2023 + 2^15 reads as 2023 for a
30522-entry vocab) and gives a zero row otherwise (-1 and vocab itself, there).  Clients
check the range before sharing (:func:`veil.parties.validation.check_token_ids`).
Error: none: the result equals the table rows exactly (fixed-point encoding of the table).
Cost per token, per party: A2B (6 rounds for B = 15 or 16, 72 bytes), AND-reduce (log2 of
the lane width, 3-4 rounds, 8 (2^H + 2^L) bytes each), B2A (1 round, 10.67 (2^H + 2^L)
bytes), outer product (1 round, 8 * vocab bytes), matmul (1 round, 8 * dim bytes): 12
rounds (14 with the full 64-bit A2B before) and, for a
30522 x 768 table (H = 7, L = 8), 264 kB per token (33.76 MB for 128 tokens, measured).
"""

from __future__ import annotations

import math

import torch

from veil.mpc.arith import ArithShare, cat
from veil.protocols.approx._common import FRAC_BITS, products, quantize
from veil.protocols.conversions import a2b, b2a_bit


def embedding_twin(
    ids: torch.Tensor, table: torch.Tensor, frac_bits: int | None = FRAC_BITS
) -> torch.Tensor:
    """Float twin of :func:`embedding` (the exact rows, rounded like the shared table)."""
    return quantize(table.to(torch.float64), frac_bits)[ids]


def _and_reduce_shifts(width: int) -> list[int]:
    """Halving shifts that AND bits 0..width-1 of a word into bit 0."""
    shifts, span = [], 1
    while span < width:
        shifts.append(span)
        span *= 2
    return shifts[::-1]


def half_onehots(ids: ArithShare, id_bits: int) -> tuple[ArithShare, ArithShare]:
    """One-hots of the high and low halves of the ids: (..., 2^H) and (..., 2^L)."""
    low_bits = (id_bits + 1) // 2
    high_bits = id_bits - low_bits
    words = a2b(ids, id_bits)  # ids mod 2^id_bits: the halves need no higher bit
    halves = [(words >> low_bits) & ((1 << high_bits) - 1), words & ((1 << low_bits) - 1)]
    tests = []
    for half, bits in zip(halves, (high_bits, low_bits)):
        values = torch.arange(1 << bits, dtype=torch.int64, device=ids.device)
        low_mask = (1 << bits) - 1
        # Bits 0..bits-1 are 1 where the half equals the value; the rest are set to 1.
        tests.append(((~(half.unsqueeze(-1) ^ values)) & low_mask) ^ ~low_mask)
    words = cat(tests, dim=-1)
    for shift in _and_reduce_shifts(max(low_bits, high_bits, 1)):
        words = words & (words >> shift)
    onehots = b2a_bit(words)
    split = 1 << high_bits
    return onehots[..., :split], onehots[..., split:]


def embedding(ids: ArithShare, table: ArithShare) -> ArithShare:
    """Rows ``table[ids]`` for secret integer ids (..., ) -> (..., dim)."""
    if ids.frac_bits != 0:
        raise ValueError("token ids must be an integer share (frac_bits 0)")
    vocab = table.shape[0]
    with ids.party.comm.scope("embedding"):
        high, low = half_onehots(ids, max(1, math.ceil(math.log2(vocab))))
        # Only the vocab's (high, low) pairs: onehot[v] = high[v // 2^L] * low[v % 2^L].
        entries = torch.arange(vocab, device=ids.device)
        lows = low.shape[-1]
        (onehot,) = products([(high[..., entries // lows], low[..., entries % lows])])
        return onehot @ table


def embedding_onehot(onehot: ArithShare, table: ArithShare) -> ArithShare:
    """``onehot @ table`` for a secret integer 0/1 one-hot (..., vocab), e.g. from argmax.

    The one-hot is an integer share, so the product needs no truncation and the rows come
    out exactly.  Cost: 1 round, 8 * dim bytes per row per party.
    """
    if onehot.frac_bits != 0:
        raise ValueError("the one-hot must be an integer share (frac_bits 0)")
    with onehot.party.comm.scope("embedding"):
        return onehot @ table
