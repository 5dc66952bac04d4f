"""Arithmetic <-> boolean conversions (ABY3 §5.3): A2B, MSB, bit B2A.

A2B(x), x = x_0 + x_1 + x_2: party 0 holds x_0 and x_1 and boolean-shares their sum
(one resharing round); x_2 is boolean-shared for free (its two holders place it in
component 2).  A Kogge-Stone parallel-prefix adder then adds the two numbers:

    g = a & b, p = a ^ b;  for s in 1, 2, 4, 8, 16, 32:
        g <- g ^ (p & (g << s)),  p <- p & (p << s)      (two ANDs, one round)
    sum = a ^ b ^ (g << 1)

(``|`` is ``^`` in the carry update because a prefix cannot both generate and
propagate.)  Cost: 1 + 1 + 6 = 8 rounds; bytes per element per party: 8 (reshare)
+ 8 (g) + 5 * 16 + 8 (levels) = 104.  MSB alone needs only the carry into bit 63:
nibble carries as one round of cross products, then a 16-leaf tree, 5 rounds and about
26.3 bytes (:mod:`veil.protocols.carry`).

B2A of one bit b = u ^ v, with u = b_d ^ b_{d+1} known to a dealer d and v = b_{d+2}
to the other two: b = u + v - 2uv = u (1 - 2v) + v, one cross product
(:mod:`veil.protocols.cross`) instead of ABY3's two multiplications
s = b_0 + b_1 - 2 b_0 b_1, b = s + b_2 - 2 s b_2.
Cost: 1 round; the dealer sends 2 ring elements, each neighbour 1, every party deals a
third of the bits: 4 / 3 x 8 = 10.67 bytes per element per party (each third rounded).
Exact; secure as the cross products are.
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.boolean import BoolShare
from veil.protocols.boolean import and_shares
from veil.protocols.carry import msb_split
from veil.protocols.cross import DEALER, cross_products, xor_split
from veil.protocols.multiplication import reshare

RING_BITS = 64
PREFIX_SHIFTS = (1, 2, 4, 8, 16, 32)


def _share_local_sum(x: ArithShare) -> BoolShare:
    """Boolean sharing of x_0 + x_1, computed by party 0 (one round)."""
    party = x.party
    shape = x.shape
    mask = party.xor_zero_share(shape)
    piece = (x.data[0] + x.data[1]) ^ mask if party.rank == 0 else mask
    return BoolShare(party, reshare(party, piece))


def _two_summands(x: ArithShare) -> tuple[BoolShare, BoolShare]:
    """Boolean sharings of x_0 + x_1 (one round) and of x_2 (free), which add up to x."""
    party = x.party
    third = BoolShare.from_component(party, 2, x.data[0] if party.rank == 2 else x.data[1])
    return _share_local_sum(x), third


def add_boolean(a: BoolShare, b: BoolShare, width: int = RING_BITS) -> BoolShare:
    """a + b mod 2^64 on XOR-shared words: Kogge-Stone adder, 7 AND rounds.

    ``width``: only bits 0..width-1 of the sum are wanted (the rest are garbage): the
    prefix levels stop at spans of ``width``, 1 + ceil(log2 width) AND rounds."""
    shifts = [shift for shift in PREFIX_SHIFTS if shift < width]
    g = a & b
    p = a ^ b
    for level, shift in enumerate(shifts):
        if level == len(shifts) - 1:
            (carry,) = and_shares([p], [g << shift])
            g = g ^ carry
        else:
            carry, p_next = and_shares([p, p], [g << shift, p << shift])
            g, p = g ^ carry, p_next
    return a ^ b ^ (g << 1)


def a2b(x: ArithShare, width: int = RING_BITS) -> BoolShare:
    """Boolean sharing of the 64-bit words of x (8 rounds); with ``width`` < 64 only bits
    0..width-1 are right (x mod 2^width, e.g. token ids: 2 + ceil(log2 width) rounds, 6
    for 16 bits) and the bits above are garbage."""
    party = x.party
    with party.comm.scope("a2b"):
        low, third = _two_summands(x)
        return add_boolean(low, third, width)


def msb(x: ArithShare) -> BoolShare:
    """Bit 63 of x (1 iff x < 0 as a signed value), in bit 0 of a BoolShare.

    Only the carry into bit 63 is computed (:func:`veil.protocols.carry.msb_split`).
    Cost: 5 rounds, about 26.3 bytes per element per party (a full A2B would be 104).
    """
    with x.party.comm.scope("msb"):
        return msb_split(x)


def b2a_bit(bits: BoolShare) -> ArithShare:
    """Arithmetic (integer) sharing of bit 0 of each word (1 round)."""
    party = bits.party
    flat = bits.data.reshape(2, -1) & 1

    def alphas(part: slice) -> torch.Tensor:
        return xor_split(flat[:, part], DEALER).unsqueeze(0)

    def betas(part: slice, role: int) -> tuple[torch.Tensor, torch.Tensor]:
        v = xor_split(flat[:, part], role)
        return (1 - 2 * v).view(1, 1, -1), v.unsqueeze(0)

    with party.comm.scope("b2a"):
        parts = cross_products(party, flat.shape[1], lambda part: part.stop - part.start, 1, 1,
                               alphas, betas, boolean=False)
    data = torch.cat([out[:, 0] for _, out in parts], dim=1)
    return ArithShare(party, data.reshape(2, *bits.shape), 0)
