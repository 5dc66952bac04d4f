"""Selection: multiplexer and ReLU.

mux(c, x, y) = y + c (x - y) for an integer 0/1 share c: one multiplication with an
integer operand, so no truncation.  Cost: 1 round, 8 bytes per element per party.

relu(x) = x * [x >= 0] = x * (1 - MSB(x)): bit-sliced MSB + B2A + one multiplication.
Cost: 11 rounds, 55.5 bytes per element per party.  Valid for |x| < 2^(63-f).
"""

from __future__ import annotations

from veil.mpc.arith import ArithShare, Public
from veil.protocols.conversions import b2a_bit, msb


def mux(condition: ArithShare, x: ArithShare | Public, y: ArithShare | Public) -> ArithShare:
    """condition ? x : y elementwise (torch broadcasting)."""
    if condition.frac_bits != 0:
        raise ValueError("mux needs an integer 0/1 condition share (frac_bits 0)")
    with condition.party.comm.scope("mux"):
        return condition * (x - y) + y


def relu(x: ArithShare) -> ArithShare:
    with x.party.comm.scope("relu"):
        positive = b2a_bit(msb(x) ^ 1)
        return positive * x
