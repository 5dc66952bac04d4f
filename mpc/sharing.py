"""Creating and opening secret sharings.

``share``: a party that knows a value (the *owner*) deals a replicated sharing of it.
The two components it holds with one neighbour each are drawn from the pairwise PRGs
(so those neighbours get them without messages); the third is x minus both and goes to
the two other parties. Cost: one round; the owner sends 2 elements per element.

``deal``/``reconstruct``: an owner outside the three parties (a client, a model owner)
sends each party its pair and gets output pairs back.

``reveal``: party i lacks only x_{i+2}, which party i+1 holds as its second
component, so each party sends that to its predecessor. One round, one element per
element per party.
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.boolean import BoolShare
from veil.mpc.fixedpoint import FixedPoint
from veil.mpc.party import Party
from veil.mpc.prg import AesPrg, new_key


def share(party: Party, value: torch.Tensor | float | None, owner: int = 0) -> ArithShare:
    """Secret-share ``value`` (used only at ``owner``; other parties may pass None).

    Floating-point values are encoded as fixed point (range-checked), integer tensors
    are shared as integers (``frac_bits`` 0).
    """
    if owner not in range(3):
        raise ValueError(f"unknown owner party {owner}: expected 0, 1 or 2")
    comm = party.comm
    with comm.scope("share"):
        if party.rank == owner:
            if value is None:
                raise ValueError(f"party {owner} owns the value to share but passed None")
            value = torch.as_tensor(value)
            if value.is_floating_point():
                ring, frac = party.fxp.encode(value, device=party.device), party.fxp.frac_bits
            else:
                ring, frac = value.to(dtype=torch.int64, device=party.device), 0
            mine = party.random_prev(ring.shape)  # component `owner`, known to owner-1 too
            theirs = party.random_next(ring.shape)  # component owner+1, known to owner+1
            last = ring - mine - theirs  # component owner+2
            header = torch.tensor([frac], dtype=torch.int64)
            for peer in (party.next_rank, party.prev_rank):
                comm.send(peer, header)
                comm.send(peer, last)
            return ArithShare(party, torch.stack((mine, theirs)), frac)
        frac = int(comm.recv(owner)[0])
        last = comm.recv(owner).to(party.device)
        if party.rank == (owner + 1) % 3:  # holds (x_{o+1}, x_{o+2})
            return ArithShare(party, torch.stack((party.random_prev(last.shape), last)), frac)
        return ArithShare(party, torch.stack((last, party.random_next(last.shape))), frac)


def reveal_ring(party: Party, data: torch.Tensor, combine: str = "add") -> torch.Tensor:
    """Open a replicated sharing given as stacked components (one round)."""
    with party.comm.scope("reveal"):
        missing = party.comm.send_prev_recv_next(data[1]).to(data.device)
    if combine == "xor":
        return data[0] ^ data[1] ^ missing
    return data[0] + data[1] + missing


def reveal(x: ArithShare) -> torch.Tensor:
    """The value of ``x`` at every party: float64 for fixed point, int64 for integers."""
    ring = reveal_ring(x.party, x.data)
    return ring if x.frac_bits == 0 else x.party.fxp.decode(ring, x.frac_bits)


def reveal_bool(x: BoolShare) -> torch.Tensor:
    return reveal_ring(x.party, x.data, combine="xor")


def reveal_to(x: ArithShare, receiver: int) -> torch.Tensor | None:
    """Open ``x`` to ``receiver`` only; the other parties learn nothing and get None."""
    party = x.party
    sender = (receiver + 1) % 3
    with party.comm.scope("reveal"):
        if party.rank == sender:
            party.comm.send(receiver, x.data[1])
            return None
        if party.rank != receiver:
            return None
        ring = x.data[0] + x.data[1] + party.comm.recv(sender).to(x.device)
    return ring if x.frac_bits == 0 else party.fxp.decode(ring, x.frac_bits)


def encode_for_dealing(
    value: torch.Tensor, fxp: FixedPoint | None = None
) -> tuple[torch.Tensor, int]:
    """(ring elements, fractional bits) of a value an owner deals: floats in fixed point,
    integers (token ids) as they are with 0 fractional bits."""
    fxp = fxp or FixedPoint()
    value = torch.as_tensor(value)
    if value.is_floating_point():
        return fxp.encode(value), fxp.frac_bits
    return value.to(torch.int64), 0


def deal_components(value: torch.Tensor, fxp: FixedPoint | None = None) -> tuple[torch.Tensor, int]:
    """An *outside* owner (the client, the model owner) splits ``value`` into components.

    Returns x_0, x_1, x_2 stacked (3, ...) and the fractional bits: x_0 and x_1 come from a
    fresh AES-CTR key that only the owner holds, x_2 = x - x_0 - x_1.  Party i must receive
    only (x_i, x_{i+1}) (see :func:`deal`), which is uniformly random on its own.
    """
    ring, frac = encode_for_dealing(value, fxp)
    components = torch.empty(3, *ring.shape, dtype=torch.int64)
    prg = AesPrg(new_key())
    components[0] = prg.random_int64(ring.shape)
    components[1] = prg.random_int64(ring.shape)
    torch.sub(ring - components[0], components[1], out=components[2])
    return components, frac


def deal(value: torch.Tensor, fxp: FixedPoint | None = None) -> tuple[list[torch.Tensor], int]:
    """Each party's stacked pair (x_i, x_{i+1}) of a fresh sharing of ``value``, and its scale."""
    components, frac = deal_components(value, fxp)
    return [components[[i, (i + 1) % 3]] for i in range(3)], frac


def reconstruct(pairs: list[torch.Tensor], frac_bits: int, fxp: FixedPoint | None = None) -> torch.Tensor:
    """What the client does with the three parties' output pairs.

    Every component arrives from two parties; a mismatch means a party deviated or the
    shares were mixed up, and is reported instead of returning a wrong answer.
    """
    if len(pairs) != 3:
        raise ValueError(f"need the output shares of all three parties, got {len(pairs)}")
    for i in range(3):
        if not torch.equal(pairs[i][1], pairs[(i + 1) % 3][0]):
            raise ValueError(f"parties {i} and {(i + 1) % 3} disagree on output component {(i + 1) % 3}")
    ring = pairs[0][0] + pairs[1][0] + pairs[2][0]
    return ring if frac_bits == 0 else (fxp or FixedPoint()).decode(ring, frac_bits)
