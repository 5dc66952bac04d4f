"""AND of XOR-shared words (ABY3): the boolean twin of multiplication.

z_i = (x_i & y_i) ^ (x_i & y_{i+1}) ^ (x_{i+1} & y_i) ^ alpha_i
    = (x_i & (y_i ^ y_{i+1})) ^ (x_{i+1} & y_i) ^ alpha_i, alpha a XOR zero-sharing,
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
    shapes = [torch.broadcast_shapes(xd.shape[1:], yd.shape[1:]) for xd, yd in pairs]
    total = sum(shape.numel() for shape in shapes)
    with party.comm.scope("and"):
        # Row 0: this party's 3-out-of-3 share, row 1: the one received from party i+1.
        out = torch.empty(2, total, dtype=torch.int64, device=xs[0].device)
        mask = party.xor_zero_share((total,))
        start = 0
        for (xd, yd), shape in zip(pairs, shapes):
            n = shape.numel()
            local = (xd[0] & (yd[0] ^ yd[1])) ^ (xd[1] & yd[0])
            torch.bitwise_xor(local.reshape(-1), mask[start:start + n], out=out[0, start:start + n])
            start += n
        out[1] = party.comm.send_prev_recv_next(out[0])
    results, start = [], 0
    for shape in shapes:
        n = shape.numel()
        results.append(BoolShare(party, out[:, start:start + n].reshape(2, *shape)))
        start += n
    return results


def and_packed(xs: BoolShare, ys: BoolShare, width: int) -> BoolShare:
    """x & y for words whose meaningful bits are the low ``width`` bits, in one round.

    64 // width elements travel in each 64-bit word, so the round costs
    8 * width / 64 bytes per element per party instead of 8.  Bits above ``width`` in
    the result are zero.
    """
    per_word = 64 // width
    if per_word <= 1:
        return xs & ys
    shape = torch.broadcast_shapes(xs.shape, ys.shape)
    xd, yd = aligned_pair(xs, ys)
    packed = [_pack(d.expand(2, *shape).reshape(2, -1), width, per_word) for d in (xd, yd)]
    (z,) = and_shares([BoolShare(xs.party, packed[0])], [BoolShare(xs.party, packed[1])])
    return BoolShare(xs.party, _unpack(z.data, width, per_word, shape.numel()).reshape(2, *shape))


def _pack(flat: torch.Tensor, width: int, per_word: int) -> torch.Tensor:
    """(2, n) words with ``width`` meaningful low bits -> (2, ceil(n / per_word)) words."""
    n = flat.shape[1]
    padded = torch.nn.functional.pad(flat, (0, (-n) % per_word))
    lanes = padded.reshape(2, -1, per_word)
    mask = (1 << width) - 1
    words = lanes[..., 0] & mask
    for j in range(1, per_word):
        words = words ^ ((lanes[..., j] & mask) << (width * j))
    return words


def _unpack(words: torch.Tensor, width: int, per_word: int, n: int) -> torch.Tensor:
    mask = (1 << width) - 1
    lanes = [(words >> (width * j)) & mask for j in range(per_word)]
    return torch.stack(lanes, dim=-1).reshape(2, -1)[:, :n]
