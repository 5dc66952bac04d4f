"""Comparisons of secret (or public) operands, returning integer 0/1 shares.

less_than(x, y) = MSB(x - y), correct whenever |x - y| < 2^63 in the ring (for
fixed-point values: |x - y| < 2^(63-f)).  Cost: MSB from nibble carries (5 rounds,
about 26.3 bytes) + B2A (1 round, 10.67 bytes) = 6 rounds, about 37 bytes per element
per party.

equal(x, y) tests d = x - y for zero without an adder: party 0 holds d_0 + d_1 =: s,
parties 1 and 2 hold d_2, and d = 0 iff s = -d_2.  Party 0 XOR-shares s (one round),
-d_2 is placed in component 2 for free, and the 64 bits of NOT(s ^ -d_2) are
AND-reduced by a bit-sliced halving tree (6 rounds, 7.9 bytes), then converted to
arithmetic (1 round, 10.67 bytes).  Cost: 8 rounds, 26.6 bytes per element per party.
Exact for all ring values.
"""

from __future__ import annotations

from veil.mpc.arith import ArithShare, Public
from veil.mpc.boolean import BoolShare
from veil.mpc.lockstep import RoundLink, Steps
from veil.protocols.bits import all_ones
from veil.protocols.carry import msb_split_arith, msb_split_steps
from veil.protocols.conversions import _share_local_sum, b2a_bit, msb


def _difference(x: ArithShare | Public, y: ArithShare | Public) -> ArithShare:
    if isinstance(x, ArithShare):
        return x - y
    if isinstance(y, ArithShare):
        return (-y) + x
    raise TypeError("comparison needs at least one secret operand")


def less_than_bits(x: ArithShare | Public, y: ArithShare | Public) -> BoolShare:
    """[x < y] in bit 0 of a BoolShare (the MSB, 5 rounds), for consumers that take bits
    (:func:`veil.protocols.select.mux_bits`, ANDs): they skip B2A's round."""
    diff = _difference(x, y)
    with diff.party.comm.scope("less_than"):
        return msb(diff)


def less_than_bits_steps(link: RoundLink, x: ArithShare | Public, y: ArithShare | Public) -> Steps[BoolShare]:
    """:func:`less_than_bits` as steps (:mod:`veil.mpc.lockstep`), e.g. beside a polynomial."""
    return (yield from msb_split_steps(link, _difference(x, y)))


def less_than(x: ArithShare | Public, y: ArithShare | Public, fused_root: bool = False) -> ArithShare:
    """[x < y] as an integer 0/1 share.

    ``fused_root`` merges the carry tree's last AND with B2A
    (:func:`veil.protocols.carry.msb_split_arith`): 5 rounds instead of 6 for 68.9 instead
    of 36.96 bytes per element, worth it for few elements on the critical path.
    """
    diff = _difference(x, y)
    with diff.party.comm.scope("less_than"):
        if fused_root:
            with diff.party.comm.scope("msb"):
                return msb_split_arith(diff)
        return b2a_bit(msb(diff))


def is_zero_bits(d: ArithShare) -> BoolShare:
    """Bit 0 of the result is 1 iff d == 0 (7 rounds, 15.9 bytes per element)."""
    party = d.party
    s = _share_local_sum(d)
    minus_d2 = -(d.data[0] if party.rank == 2 else d.data[1])
    return all_ones(~(s ^ BoolShare.from_component(party, 2, minus_d2)))


def equal(x: ArithShare | Public, y: ArithShare | Public) -> ArithShare:
    """[x == y] as an integer 0/1 share."""
    diff = _difference(x, y)
    with diff.party.comm.scope("equal"):
        return b2a_bit(is_zero_bits(diff))
