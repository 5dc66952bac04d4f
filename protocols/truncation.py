"""Precise truncation of a replicated share by m bits (SPU's one-bit-error truncation).

Source: arXiv 1910.12435 §3.2.2 and eprint 2020/338 §5.1, as in SecretFlow-SPU's
``TruncAPr``.  Roles: A = party a, B = a+1, H = a+2.  Each call splits the elements
into thirds and runs the steps on the j-th third with a = j, all thirds in the same
rounds: every party plays each role on a third of the elements, so the parties send equal
bytes in every call.

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

Cost: 2 rounds, 16 bytes per element per party (each role sends 2 ring elements).

Fused with a product (:func:`truncate_product`).  Right after the local step of a
multiplication the parties hold 3-out-of-3 components z_A, z_B, z_H of the product z;
resharing them (1 round) and then running steps 3-5 would cost 3 rounds.  Instead step 3
opens c = z + 2^62 + r to A and B directly from the components, in the same round as
step 2:

3'. H sends z_H + t_B to A and z_H + t_A to B (t_A from the A-H key, t_B from the
    B-H key); A sends z_A + 2^62 + r_A - t_A to B, B sends z_B + r_B - t_B to A.  Each
    adds its own term and the two messages: the masks t cancel and both get c.

Why a single party learns nothing: A's two messages are z_H + t_B and z_B + r_B - t_B,
with t_B and r_B from the B-H key that A lacks, so they are uniform and independent of
z (B symmetrically, with t_A and r_A); H receives nothing.  The components need no
zero-sharing for this.  Cost fused: 2 rounds per fixed-point product instead of 3, and
64/3 = 21.33 bytes per element per party (A and B send 2 ring elements, H 4) instead
of 24.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.lockstep import RoundLink, Steps, run_alone
from veil.mpc.party import Party
from veil.protocols.cross import thirds

HALF_RING = 1 << 63
BIAS = 1 << 62
LOW63 = (1 << 63) - 1
ROLE_A, ROLE_B, ROLE_H = 0, 1, 2


def _msb(words: torch.Tensor) -> torch.Tensor:
    return (words >> 63) & 1


def truncate(x: ArithShare, m: int) -> ArithShare:
    """floor(x / 2^m) + {0 or 1}, for |x| < 2^62 in the ring; result has frac_bits - m."""
    _check_shift(m)
    party = x.party
    flat = x.data.reshape(2, -1)

    def term(role: int, part: slice) -> torch.Tensor | None:
        if role == ROLE_A:
            return flat[0, part] + flat[1, part] + BIAS
        return flat[1, part] if role == ROLE_B else None

    with party.comm.scope("trunc"):
        data = _truncate(party, term, flat.shape[1], x.device, m, fused=False)
    return ArithShare(party, data.reshape(2, *x.shape), x.frac_bits - m)


def truncate_product(party: Party, z: torch.Tensor, m: int | torch.Tensor, frac: int) -> ArithShare:
    """Truncate a product still held as 3-out-of-3 components z_i (sum z), in 2 rounds.

    Multiplication followed by :func:`truncate` costs 1 + 2 rounds; here the product's
    resharing round is the opening of c itself (step 3'), so a fixed-point product costs
    2 rounds.  ``z`` needs no zero-sharing: every component that leaves its party is
    masked by a key its receiver lacks (see the module docstring).

    ``m`` is one shift, or a public int64 tensor of shifts in 0..61, one per element of
    ``z``: products cut by different numbers of bits then share the call (a shift of 0
    reshares exactly, with no carry error).  The result reads with ``frac - max(m)``
    fractional bits; a caller with several shifts relabels each group of elements.
    """
    with party.comm.scope("trunc"):
        return run_alone(party, lambda link: truncate_product_steps(link, z, m, frac))


def truncate_product_steps(link: RoundLink, z: torch.Tensor, m: int | torch.Tensor, frac: int) -> Steps[ArithShare]:
    """:func:`truncate_product` as steps (:mod:`veil.mpc.lockstep`), to share its 2 rounds."""
    party = link.party
    if isinstance(m, torch.Tensor):
        if m.shape != z.shape or not (0 <= int(m.min()) and int(m.max()) < 62):
            raise ValueError("per-element truncation shifts must match the product and lie in 0..61")
        frac_out, m = frac - int(m.max()), m.reshape(-1).to(z.device)
    else:
        _check_shift(m)
        frac_out = frac - m
    flat = z.reshape(-1)

    def term(role: int, part: slice) -> torch.Tensor:
        return flat[part] + BIAS if role == ROLE_A else flat[part]

    data = yield from _truncate_steps(link, term, flat.numel(), z.device, m, fused=True)
    return ArithShare(party, data.reshape(2, *z.shape), frac_out)


def _check_shift(m: int) -> None:
    if not 0 < m < 62:
        raise ValueError(f"truncation by {m} bits is outside 1..61")


def _pow2(e: int | torch.Tensor) -> int | torch.Tensor:
    """2^e in the ring; e = 63 (a shift of 0) wraps to -2^63, which is 2^63 mod 2^64."""
    if isinstance(e, torch.Tensor):
        return torch.ones((), dtype=torch.int64, device=e.device) << e
    return 1 << e


def _truncate(party: Party, term: Callable[[int, slice], torch.Tensor | None], n: int,
              device: torch.device, m: int | torch.Tensor, fused: bool) -> torch.Tensor:
    """Steps 1-5 on n flattened elements; returns this party's (2, n) components."""
    return run_alone(party, lambda link: _truncate_steps(link, term, n, device, m, fused))


def _truncate_steps(link: RoundLink, term: Callable[[int, slice], torch.Tensor | None], n: int,
                    device: torch.device, m: int | torch.Tensor, fused: bool) -> Steps[torch.Tensor]:
    """Steps 1-5 on n flattened elements, as steps; returns this party's (2, n) components.

    ``term(role, part)`` is this party's 2-out-of-2 term in its role on that part (A:
    including the 2^62 bias; H: z_H when ``fused``, else None).  The parts run phase by
    phase, so every message of a round is sent before any of that round is awaited.
    The order of the PRG draws is part of the protocol: the two parties of each key draw
    from it in the same order (phase, then part, then as written).
    """
    party = link.party
    parts = thirds(n, party)
    shifts = [m[part] if isinstance(m, torch.Tensor) else m for part, _ in parts]
    state: list[dict[str, torch.Tensor]] = []
    # Round 1: H deals rb, rc to B (and, fused, sends z_H masked to A and B); A and B send
    # their masked terms to each other.  A party's messages to a peer travel as one.
    outbox = link.outbox
    for (part, role), shift in zip(parts, shifts):
        k = part.stop - part.start
        if role == ROLE_H:
            r_a = party.random_next((k,))  # the A-H key
            r = r_a + party.random_prev((k,))  # plus r_B from the B-H key
            rb_a, rc_a = party.random_next((k,)), party.random_next((k,))
            outbox.add(party.prev_rank, torch.stack((_msb(r) - rb_a, ((r & LOW63) >> shift) - rc_a)))
            if fused:
                z_h = term(role, part)
                outbox.add(party.next_rank, z_h + party.random_prev((k,)))  # z_H + t_B to A
                outbox.add(party.prev_rank, z_h + party.random_next((k,)))  # z_H + t_A to B
            state.append({})
        elif role == ROLE_A:
            own = term(role, part) + party.random_prev((k,))
            rb, rc = party.random_prev((k,)), party.random_prev((k,))
            t = party.random_prev((k,)) if fused else 0  # t_A: cancels H's mask at B
            outbox.add(party.next_rank, own - t)
            state.append({"own": own, "rb": rb, "rc": rc})
        else:
            own = term(role, part) + party.random_next((k,))
            t = party.random_next((k,)) if fused else 0  # t_B: cancels H's mask at A
            outbox.add(party.prev_rank, own - t)
            state.append({"own": own})
    yield
    # A and B open c = x + 2^62 + r and compute their 2-out-of-2 shares y of the result.
    inbox = link.inbox
    for (part, role), shift, st in zip(parts, shifts, state):
        if role == ROLE_H:
            continue
        k = part.stop - part.start
        peer, helper = (party.next_rank, party.prev_rank) if role == ROLE_A else (party.prev_rank, party.next_rank)
        if role == ROLE_B:
            st["rb"], st["rc"] = inbox.take(helper, 2 * k).reshape(2, k)
        c = st["own"] + inbox.take(peer, k)
        if fused:
            c = c + inbox.take(helper, k)
        c_top = _msb(c)
        top_weight = _pow2(63 - shift)
        y = st["rb"] * (1 - 2 * c_top) * top_weight - st["rc"]
        if role == ROLE_A:
            y = y + c_top * top_weight + ((c & LOW63) >> shift) - _pow2(62 - shift)
        st["y"] = y
    # Round 2: back to replicated, components (u, w, v) with w = y_A + y_B - u - v.  A
    # party is A on one third and B on another: one message to each peer already.
    out = torch.empty(2, n, dtype=torch.int64, device=device)
    for (part, role), st in zip(parts, state):
        k = part.stop - part.start
        if role == ROLE_H:
            out[0, part] = party.random_prev((k,))  # v, the B-H key
            out[1, part] = party.random_next((k,))  # u, the A-H key
        elif role == ROLE_A:
            st["mask"] = party.random_prev((k,))  # u
            link.outbox.add(party.next_rank, st["y"] - st["mask"])
        else:
            st["mask"] = party.random_next((k,))  # v
            link.outbox.add(party.prev_rank, st["y"] - st["mask"])
    yield
    for (part, role), st in zip(parts, state):
        k = part.stop - part.start
        if role == ROLE_A:
            out[0, part] = st["mask"]
            out[1, part] = st["y"] - st["mask"] + link.inbox.take(party.next_rank, k)
        elif role == ROLE_B:
            out[0, part] = st["y"] - st["mask"] + link.inbox.take(party.prev_rank, k)
            out[1, part] = st["mask"]
    return out
