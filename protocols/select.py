"""Selection: multiplexer and ReLU.

mux(c, x, y) = y + c (x - y) for an integer 0/1 share c: one multiplication with an
integer operand, so no truncation.  Cost: 1 round, 8 bytes per element per party.

mux_bits(b, x, y) does the same for a *boolean* bit b (a comparison's MSB before B2A), in one
round instead of B2A's round and the multiplication's (bit injection, ABY3 §5.4, here by
cross products, :mod:`veil.protocols.cross`): with b = u ^ v (u at the dealer, v at the
other two) and w = x - y = W_D + W_N split the same way,

    b w = (u + v - 2uv)(W_D + W_N) = u W_N (1 - 2v) + W_D v + u W_D (1 - 2v) + v W_N,

three cross products (alphas u, W_D, u W_D) and a gamma v W_N.  Exact, integer times any
scale (no truncation).  Cost: 1 round; the dealer sends 6 ring elements, each neighbour 1:
21.3 bytes per element per party (B2A then mux: 2 rounds, 18.7 bytes).

relu(x) = [x >= 0] ? x : 0 = mux_bits(MSB(x) ^ 1, x, 0).
Cost: 6 rounds, 26.3 + 21.3 = 47.6 bytes per element per party.  Valid for |x| < 2^(63-f).
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare, Public
from veil.mpc.boolean import BoolShare
from veil.protocols.conversions import msb
from veil.protocols.cross import DEALER, cross_products, dealer_and_neighbour, xor_split


def mux(condition: ArithShare, x: ArithShare | Public, y: ArithShare | Public) -> ArithShare:
    """condition ? x : y elementwise (torch broadcasting)."""
    if condition.frac_bits != 0:
        raise ValueError("mux needs an integer 0/1 condition share (frac_bits 0)")
    with condition.party.comm.scope("mux"):
        return condition * (x - y) + y


def mux_bits(bits: BoolShare, x: ArithShare | Public, y: ArithShare | Public) -> ArithShare:
    """bit 0 of ``bits`` ? x : y elementwise (torch broadcasting), in one round."""
    party = bits.party
    w = x - y if isinstance(x, ArithShare) else (-y) + x
    if not isinstance(w, ArithShare):
        w = ArithShare.from_public(party, w)
    shape = torch.broadcast_shapes(bits.shape, w.shape)
    b = (bits.expand(*shape).data & 1).reshape(2, -1)
    words = w.expand(*shape).data.reshape(2, -1)

    def alphas(part: slice) -> torch.Tensor:
        u, w_d = xor_split(b[:, part], DEALER), dealer_and_neighbour(words[:, part], DEALER)
        return torch.stack((u, w_d, u * w_d))

    def betas(part: slice, role: int) -> tuple[torch.Tensor, torch.Tensor]:
        v, w_n = xor_split(b[:, part], role), dealer_and_neighbour(words[:, part], role)
        flip = 1 - 2 * v
        return torch.stack((w_n * flip, v, flip)).unsqueeze(0), (v * w_n).unsqueeze(0)

    with party.comm.scope("mux"):
        parts = cross_products(party, b.shape[1], lambda part: part.stop - part.start, 3, 1,
                               alphas, betas, boolean=False)
    data = torch.cat([out[:, 0] for _, out in parts], dim=1).reshape(2, *shape)
    return ArithShare(party, data, w.frac_bits) + y


def relu(x: ArithShare) -> ArithShare:
    with x.party.comm.scope("relu"):
        return mux_bits(msb(x) ^ 1, x, 0)
