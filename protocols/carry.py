"""The MSB of a replicated share in 5 rounds: nibble carries in one round, then a tree.

x = a + b with a = x_d + x_{d+1} known to a dealer d and b = x_{d+2} to the other two
(:mod:`veil.protocols.cross`); MSB(x) = a_63 ^ b_63 ^ c_63 with c_63 the carry into bit
63.  Cut the 64 bits into 16 nibbles.  A nibble's generate and propagate signals,
G = [u + v >= 16] and P = [u + v == 15] for the dealer's nibble u and the others'
nibble v, are a function f(u, v) of 16 x 16 values, and

    f(u, v) = f(0, v) ^ XOR_{j=1..15} [u == j] & (f(j, v) ^ f(0, v))

is a sum of cross products: alphas [u == j] at the dealer, betas and gamma = f(0, v)
at the others.  One round of :func:`veil.protocols.cross.cross_products` gives all 16
(G, P) pairs; the carry tree over 16 nibbles takes 4 AND rounds (3 levels of
(G, P)_hi o (G, P)_lo = (G_hi ^ P_hi & G_lo, P_hi & P_lo), then the last G alone),
instead of ABY3's resharing round, the bitwise generate round and 6 levels over 64 bits.
The top nibble carries the sum bit itself: its "G" is bit 3 of u + v and its P is
[(u mod 8) + (v mod 8) == 7], so the root's G is a_63 ^ b_63 ^ c_63 (the XOR offset
travels unchanged up the hi side of every level).

Like :mod:`veil.protocols.bits`, the words are bit-sliced: word B of a row holds nibble
B's signal for 64 elements, one bit each.  Both sides slice their own clear values
locally (a transpose of 64 x 64 bit blocks), so the dealer's one-hots and the others'
betas cost only local bit operations.

Exact for every ring value; security is that of the cross products and of AND.
Cost: 5 rounds.  Bytes per element per party: the dealer sends 2 x 15 x 16 bits, each
neighbour 2 x 16 bits, and every party plays each role on a third of the elements
(thirds of whole 64-element words): (480 + 64) / 3 / 8 = 22.7; the tree
2 x (8 + 4 + 2) + 1 = 29 bits, 3.6; 26.3 in all (31.5 for the 8-round MSB).  Summed over
the parties, 8 x (480 + 64 + 3 x 29) = 5048 bytes per 64 elements (or part of 64).
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.boolean import BoolShare
from veil.mpc.lockstep import RoundLink, Steps, run_alone
from veil.protocols.bits import WORD, and_rows_steps, transpose_bits, unslice
from veil.protocols.cross import DEALER, cross_products_steps, dealer_and_neighbour, xor_split

NIBBLE = 4
NIBBLES = WORD // NIBBLE
VALUES = 1 << NIBBLE
SIGNALS = 2  # G and P


def _tables() -> torch.Tensor:
    """Public truth tables (signal, nibble, u, v) of f, as 0 / -1 words."""
    u = torch.arange(VALUES).view(VALUES, 1)
    v = torch.arange(VALUES).view(1, VALUES)
    low = VALUES // 2 - 1
    g, p = u + v >= VALUES, u + v == VALUES - 1
    g_top, p_top = ((u + v) >> (NIBBLE - 1)) & 1 == 1, (u & low) + (v & low) == low
    table = torch.stack((g, p)).unsqueeze(1).repeat(1, NIBBLES, 1, 1)
    table[0, -1], table[1, -1] = g_top, p_top
    return -table.long()


TABLES = _tables()


def _nibble_onehots(words: torch.Tensor) -> torch.Tensor:
    """(16 values, blocks, 16 nibbles): bit e of word [w, blk, B] is [nibble B of element e of blk == w].

    One bit transpose, then the one-hots of the low and of the high bit pair (4 ANDs
    each) and their 16 pairwise ANDs.
    """
    n = words.numel()
    rows = transpose_bits(torch.nn.functional.pad(words.reshape(-1), (0, (-n) % WORD)).reshape(-1, WORD))
    bits = rows.view(-1, NIBBLES, NIBBLE)
    literals = torch.stack((~bits, bits))  # (value of the bit, blocks, nibble, bit)

    def pair(i: int) -> torch.Tensor:
        return torch.stack([literals[w & 1, ..., i] & literals[w >> 1, ..., i + 1] for w in range(4)])

    low, high = pair(0), pair(2)  # (4, blocks, nibbles): value of bits (i, i+1) == w
    return (high.unsqueeze(1) & low.unsqueeze(0)).reshape(VALUES, *bits.shape[:-1])


def _signals_of_v(onehot_v: torch.Tensor) -> torch.Tensor:
    """f(j, v) for every j: (signal, j, blocks, nibble) words, from v's one-hots.

    f(j, v) = OR_w [v == w] & f(j, w); the one-hots of distinct w have disjoint bits, so
    the OR is an integer sum and all 2 x 16 x 16 of them are one batched matrix product
    of the 0/1 tables with the one-hot words (no carries: the bits summed are disjoint).
    """
    tables = (TABLES & 1).to(onehot_v.device)  # (signal, nibble, u = j, v = w)
    if onehot_v.device.type == "cpu":
        return torch.einsum("sbjw,wkb->sjkb", tables, onehot_v)
    out = torch.zeros((SIGNALS, VALUES, *onehot_v.shape[1:]), dtype=torch.int64, device=onehot_v.device)
    for w in range(VALUES):  # CUDA has no int64 matrix product: the same sum in 16 passes
        out += tables[..., w].permute(0, 2, 1).unsqueeze(2) * onehot_v[w]
    return out


def _root_rows(link: RoundLink, x: ArithShare) -> Steps[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """Bit-sliced (G_hi, P_hi, G_lo) of the tree's last level, (3, 2, words), and per part
    its (elements, words).

    The nibbles' cross-product round and three tree levels (4 rounds); the root is then
    G_hi ^ (P_hi & G_lo).
    """
    flat = x.data.reshape(2, -1)

    def blocks(part: slice) -> int:
        return -(-(part.stop - part.start) // WORD)

    def alphas(part: slice) -> torch.Tensor:
        onehot = _nibble_onehots(dealer_and_neighbour(flat[:, part], DEALER))
        return onehot[1:].reshape(VALUES - 1, -1)

    def betas(part: slice, role: int) -> tuple[torch.Tensor, torch.Tensor]:
        f = _signals_of_v(_nibble_onehots(dealer_and_neighbour(flat[:, part], role)))
        beta = (f[:, 1:] ^ f[:, :1]).reshape(SIGNALS, VALUES - 1, -1)
        return beta, f[:, 0].reshape(SIGNALS, -1)

    parts = yield from cross_products_steps(link, flat.shape[1], lambda part: blocks(part) * NIBBLES, VALUES - 1,
                                            SIGNALS, alphas, betas, boolean=True, align=WORD)
    signals = torch.cat([out.reshape(2, SIGNALS, -1, NIBBLES) for _, out in parts], dim=2)
    g, p = signals[:, 0], signals[:, 1]
    while g.shape[-1] > 2:
        half = g.shape[-1] // 2
        g_lo, g_hi, p_lo, p_hi = g[..., 0::2], g[..., 1::2], p[..., 0::2], p[..., 1::2]
        both = yield from and_rows_steps(link, torch.cat([p_hi, p_hi], dim=-1), torch.cat([g_lo, p_lo], dim=-1))
        g, p = g_hi ^ both[..., :half], both[..., half:]
    layout = [(part.stop - part.start, blocks(part)) for part, _ in parts]
    return torch.stack((g[..., 1], p[..., 1], g[..., 0])), layout


def _unsliced(row: torch.Tensor, layout: list[tuple[int, int]], party) -> torch.Tensor:
    """A bit-sliced row (2, words) back to one bit per element, (2, n), part by part."""
    bits, start = [], 0
    for k, width in layout:
        bits.append(unslice(row[:, start:start + width], k, torch.Size([k]), party).data)
        start += width
    return torch.cat(bits, dim=1)


def msb_split(x: ArithShare) -> BoolShare:
    """Bit 63 of x in bit 0 of a BoolShare (5 rounds; see the module docstring)."""
    return run_alone(x.party, lambda link: msb_split_steps(link, x))


def msb_split_steps(link: RoundLink, x: ArithShare) -> Steps[BoolShare]:
    """:func:`msb_split` as steps (:mod:`veil.mpc.lockstep`)."""
    party = link.party
    (g_hi, p_hi, g_lo), layout = yield from _root_rows(link, x)
    top = g_hi ^ (yield from and_rows_steps(link, p_hi, g_lo))
    return BoolShare(party, _unsliced(top, layout, party).reshape(2, *x.shape))


def _root_values(root: torch.Tensor) -> torch.Tensor:
    """G_hi ^ (P_hi & G_lo) for every one of the 8 values of the three bits: (8,) 0/1."""
    g, p, q = root & 1, (root >> 1) & 1, (root >> 2) & 1
    return g ^ (p & q)


ROOT_VALUES = 1 << 3
ROOT_TABLE = _root_values(torch.arange(ROOT_VALUES))


def msb_split_arith(x: ArithShare) -> ArithShare:
    """Bit 63 of x as an integer 0/1 share in 5 rounds: the root's AND and B2A in one.

    The root bit is a function of three bits, each split between the dealer (U) and its
    neighbours (V) for free, so its arithmetic value is
    f(U ^ V) = f(V) + sum_{j=1..7} [U == j] (f(j ^ V) - f(V)), one round of ring cross
    products with the dealer's 7 one-hot rows (:mod:`veil.protocols.cross`).  Instead of
    the last AND (1 round) and B2A (1 round).  Cost: 5 rounds; bytes per element per party
    about 26.2 (the MSB without its last AND) + (14 + 2) / 3 x 8 = 42.7: 68.9 instead of
    36.96, for comparisons with few elements on the critical path (the brackets of rsqrt
    and reciprocal).  Exact; secure as the cross products are.
    """
    return run_alone(x.party, lambda link: msb_split_arith_steps(link, x))


def msb_split_arith_steps(link: RoundLink, x: ArithShare) -> Steps[ArithShare]:
    """:func:`msb_split_arith` as steps (:mod:`veil.mpc.lockstep`)."""
    party = link.party
    sliced, layout = yield from _root_rows(link, x)
    rows = torch.stack([_unsliced(row, layout, party) for row in sliced])  # (3, 2, n) bits
    weights = torch.tensor([1, 2, 4], dtype=torch.int64, device=x.device).view(3, 1, 1)
    codes = (rows * weights).sum(0)  # per component: the three bits as one 3-bit code
    table = ROOT_TABLE.to(x.device)
    values = torch.arange(1, ROOT_VALUES, device=x.device).view(-1, 1)

    def alphas(part: slice) -> torch.Tensor:
        return (xor_split(codes[:, part], DEALER) == values).long()

    def betas(part: slice, role: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = xor_split(codes[:, part], role)
        base = table[v]
        return (table[values ^ v] - base).unsqueeze(0), base.unsqueeze(0)

    parts = yield from cross_products_steps(link, codes.shape[1], lambda part: part.stop - part.start,
                                            ROOT_VALUES - 1, 1, alphas, betas, boolean=False)
    data = torch.cat([out[:, 0] for _, out in parts], dim=1)
    return ArithShare(party, data.reshape(2, *x.shape), 0)
