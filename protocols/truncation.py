"""Precise truncation of a replicated share by m bits (SPU's one-bit-error truncation).

Source: arXiv 1910.12435 §3.2.2 and eprint 2020/338 §5.1, as in SecretFlow-SPU's
``TruncAPr``.  Roles rotate between calls: A = party a, B = a+1, H = a+2, with
a = call counter mod 3 (the counter advances identically everywhere).

1. A and B draw r_A, r_B from the keys they share with H; H knows r = r_A + r_B.
2. H sends B its half of 2-out-of-2 shares of rb = bit 63 of r and
   rc = (r mod 2^63) >> m (A's halves come from the A-H key: no message).
3. A's 2-out-of-2 share of x is x_a + x_{a+1} + 2^62, B's is x_{a+2}.  They exchange
   share + r_X, so both learn c = x + 2^62 + r, uniformly random to them.
4. b = rb XOR bit63(c) is the wrap of (x + 2^62) + (r mod 2^63);
   y = ((c mod 2^63) >> m) - rc + b 2^(63-m) - 2^(62-m)  (public terms at A only).
5. Back to replicated: A and H draw a mask u, B and H a mask v; A and B exchange their
   shares minus their masks; the components become (u, w, v) with w = y - u - v.

Valid range: |x| < 2^62 (ring elements), i.e. |value| < 2^(62-f') for a value with
f' fractional bits.  Error: y - floor(x / 2^m) is 0 or 1, *always*.  Why no large
error: x + 2^62 lies in [0, 2^63), so the sum with r mod 2^63 wraps past 2^63 at most
once, and that single wrap is exactly b; the only inexactness is the carry out of the
m low bits.  There is no failure probability at all (SecureML's local truncation
instead fails with probability ~|x| / 2^63 per element, with an error of ~2^(64-f)).

Cost: 2 rounds.  Bytes per element: A sends 2 ring elements, B 2, H 2 (16 B each).
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare

HALF_RING = 1 << 63
BIAS = 1 << 62
LOW63 = (1 << 63) - 1
ROLE_A, ROLE_B, ROLE_H = 0, 1, 2


def _msb(words: torch.Tensor) -> torch.Tensor:
    return (words >> 63) & 1


def truncate(x: ArithShare, m: int) -> ArithShare:
    """floor(x / 2^m) + {0 or 1}, for |x| < 2^62 in the ring; result has frac_bits - m."""
    if not 0 < m < 62:
        raise ValueError(f"truncation by {m} bits is outside 1..61")
    party = x.party
    comm = party.comm
    shape = x.shape
    a = party.next_call() % 3
    role = (party.rank - a) % 3
    frac = x.frac_bits - m
    with comm.scope("trunc"):
        if role == ROLE_H:
            r_a = party.random_next(shape)  # key k_a: shared with A
            r_b = party.random_prev(shape)  # key k_{a+2}: shared with B
            r = r_a + r_b
            rb_a, rc_a = party.random_next(shape), party.random_next(shape)
            rb, rc = _msb(r), (r & LOW63) >> m
            comm.send(party.prev_rank, torch.stack((rb - rb_a, rc - rc_a)))
            v = party.random_prev(shape)
            u = party.random_next(shape)
            return ArithShare(party, torch.stack((v, u)), frac)

        if role == ROLE_A:
            r_mine = party.random_prev(shape)
            rb_mine, rc_mine = party.random_prev(shape), party.random_prev(shape)
            share_mine = x.data[0] + x.data[1] + BIAS
            peer = party.next_rank
        else:
            r_mine = party.random_next(shape)
            rb_mine, rc_mine = comm.recv(party.next_rank).to(x.device)
            share_mine = x.data[1]
            peer = party.prev_rank
        comm.send(peer, share_mine + r_mine)
        c = share_mine + r_mine + comm.recv(peer).to(x.device)
        c_top = _msb(c)
        b_mine = rb_mine * (1 - 2 * c_top)
        y = b_mine * (1 << (63 - m)) - rc_mine
        if role == ROLE_A:
            y = y + c_top * (1 << (63 - m)) + ((c & LOW63) >> m) - (1 << (62 - m))
            mask = party.random_prev(shape)  # u, shared with H
        else:
            mask = party.random_next(shape)  # v, shared with H
        comm.send(peer, y - mask)
        w = y - mask + comm.recv(peer).to(x.device)
        data = torch.stack((mask, w)) if role == ROLE_A else torch.stack((w, mask))
        return ArithShare(party, data, frac)
