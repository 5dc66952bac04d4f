"""AND of XOR-shared words (ABY3): the boolean twin of multiplication.

z_i = (x_i & y_i) ^ (x_i & y_{i+1}) ^ (x_{i+1} & y_i) ^ alpha_i
    = (x_i & (y_i ^ y_{i+1})) ^ (x_{i+1} & y_i) ^ alpha_i, alpha a XOR zero-sharing,
then z_i goes to party i-1.  Several independent ANDs are packed into one message.

Cost: 1 round; one 64-bit word per element per party (for all 64 bits at once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from veil.mpc.boolean import BoolShare
from veil.mpc.lockstep import RoundLink, Steps, run_alone
from veil.mpc.shape_ops import aligned_pair


def and_shares(xs: Sequence[BoolShare], ys: Sequence[BoolShare]) -> list[BoolShare]:
    """[x & y for x, y in zip(xs, ys)] in a single round."""
    party = xs[0].party
    with party.comm.scope("and"):
        return run_alone(party, lambda link: and_shares_steps(link, xs, ys))


def and_shares_steps(link: RoundLink, xs: Sequence[BoolShare], ys: Sequence[BoolShare]) -> Steps[list[BoolShare]]:
    """:func:`and_shares` as steps (:mod:`veil.mpc.lockstep`)."""
    party = link.party
    pairs = [aligned_pair(x, y) for x, y in zip(xs, ys)]
    shapes = [torch.broadcast_shapes(xd.shape[1:], yd.shape[1:]) for xd, yd in pairs]
    total = sum(shape.numel() for shape in shapes)
    # Row 0: this party's 3-out-of-3 share, row 1: the one received from party i+1.
    out = torch.empty(2, total, dtype=torch.int64, device=xs[0].device)
    mask = party.xor_zero_share((total,))
    start = 0
    for (xd, yd), shape in zip(pairs, shapes):
        n = shape.numel()
        local = (xd[0] & (yd[0] ^ yd[1])) ^ (xd[1] & yd[0])
        torch.bitwise_xor(local.reshape(-1), mask[start:start + n], out=out[0, start:start + n])
        start += n
    link.outbox.add(party.prev_rank, out[0])
    yield
    out[1] = link.inbox.take(party.next_rank, total)
    results, start = [], 0
    for shape in shapes:
        n = shape.numel()
        results.append(BoolShare(party, out[:, start:start + n].reshape(2, *shape)))
        start += n
    return results
