"""Arithmetic <-> boolean conversions (ABY3 §5.3): A2B, MSB, bit B2A.

A2B(x), x = x_0 + x_1 + x_2: party 0 holds x_0 and x_1 and boolean-shares their sum
(one resharing round); x_2 is boolean-shared for free (its two holders place it in
component 2).  A Kogge-Stone parallel-prefix adder then adds the two numbers:

    g = a & b, p = a ^ b;  for s in 1, 2, 4, 8, 16, 32:
        g <- g ^ (p & (g << s)),  p <- p & (p << s)      (two ANDs, one round)
    sum = a ^ b ^ (g << 1)

(``|`` is ``^`` in the carry update because a prefix cannot both generate and
propagate.)  Cost: 1 + 1 + 6 = 8 rounds; bytes per element per party: 8 (reshare)
+ 8 (g) + 5 * 16 + 8 (levels) = 104.  MSB alone needs only the carry into bit 63,
computed by a bit-sliced tree for 31.5 bytes (:mod:`veil.protocols.bits`).

B2A of one bit b = b_0 ^ b_1 ^ b_2 (each b_j known to two parties, so an arithmetic
sharing of it is free): s = b_0 + b_1 - 2 b_0 b_1, b = s + b_2 - 2 s b_2.
Cost: 2 rounds, 16 bytes per element per party.
"""

from __future__ import annotations

from veil.mpc.arith import ArithShare
from veil.mpc.boolean import BoolShare
from veil.mpc.party import Party
from veil.protocols.bits import msb_of_sum
from veil.protocols.boolean import and_shares
from veil.protocols.multiplication import mul, reshare

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


def add_boolean(a: BoolShare, b: BoolShare) -> BoolShare:
    """a + b mod 2^64 on XOR-shared words: Kogge-Stone adder, 7 AND rounds."""
    g = a & b
    p = a ^ b
    for level, shift in enumerate(PREFIX_SHIFTS):
        if level == len(PREFIX_SHIFTS) - 1:
            (carry,) = and_shares([p], [g << shift])
            g = g ^ carry
        else:
            carry, p_next = and_shares([p, p], [g << shift, p << shift])
            g, p = g ^ carry, p_next
    return a ^ b ^ (g << 1)


def a2b(x: ArithShare) -> BoolShare:
    """Boolean sharing of the 64-bit words of x (8 rounds)."""
    party = x.party
    with party.comm.scope("a2b"):
        low, third = _two_summands(x)
        return add_boolean(low, third)


def msb(x: ArithShare) -> BoolShare:
    """Bit 63 of x (1 iff x < 0 as a signed value), in bit 0 of a BoolShare.

    Only the carry into bit 63 is computed, by a bit-sliced tree
    (:func:`veil.protocols.bits.msb_of_sum`).  Cost: 8 rounds, 8 + 23.5 = 31.5 bytes per
    element per party (a full A2B would be 104).
    """
    party = x.party
    with party.comm.scope("msb"):
        return msb_of_sum(*_two_summands(x))


def _bit_component(party: Party, bits: BoolShare, j: int) -> ArithShare:
    """Component j of a bit sharing, as an arithmetic share of that 0/1 value."""
    own, nxt = bits.data[0] & 1, bits.data[1] & 1
    value = own if party.rank == j else nxt
    return ArithShare.from_component(party, j, value, 0)


def b2a_bit(bits: BoolShare) -> ArithShare:
    """Arithmetic (integer) sharing of bit 0 of each word (2 rounds)."""
    party = bits.party
    with party.comm.scope("b2a"):
        b0, b1, b2 = (_bit_component(party, bits, j) for j in range(3))
        s = b0 + b1 - 2 * mul(b0, b1)
        return s + b2 - 2 * mul(s, b2)
