"""AND of XOR-shared words (ABY3): the boolean twin of multiplication.

z_i = (x_i & y_i) ^ (x_i & y_{i+1}) ^ (x_{i+1} & y_i) ^ alpha_i, alpha a XOR zero-sharing,
then z_i goes to party i-1.  Several independent ANDs are packed into one message.

Cost: 1 round; one 64-bit word per element per party (for all 64 bits at once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpc.boolean import BoolShare
from mpc.shape_ops import aligned_pair


def and_shares(xs: Sequence[BoolShare], ys: Sequence[BoolShare]) -> list[BoolShare]:
    """[x & y for x, y in zip(xs, ys)] in a single round."""
    party = xs[0].party
    pairs = [aligned_pair(x, y) for x, y in zip(xs, ys)]
    locals_ = [
        ((xd[0] & yd[0]) ^ (xd[0] & yd[1]) ^ (xd[1] & yd[0])) for xd, yd in pairs
    ]
    shapes = [z.shape for z in locals_]
    flat = torch.cat([z.reshape(-1) for z in locals_])
    with party.comm.scope("and"):
        flat = flat ^ party.xor_zero_share(flat.shape)
        flat_next = party.comm.send_prev_recv_next(flat).to(flat.device)
    out, start = [], 0
    for shape in shapes:
        n = shape.numel()
        data = torch.stack((flat[start:start + n].reshape(shape), flat_next[start:start + n].reshape(shape)))
        out.append(BoolShare(party, data))
        start += n
    return out
