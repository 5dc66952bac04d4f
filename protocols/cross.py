"""Sums of cross products across the split of a share, in one round.

Every replicated share splits two ways with no message: the dealer d holds
x_d + x_{d+1} in the clear, and its two neighbours both hold the third component
x_{d+2}.  So does a boolean share, and so does any function of either side.  A sum

    y_o = sum_j alpha_j * beta_{o,j} + gamma_o

with the alphas known to the dealer D alone and the betas and gammas known to its next
N = d+1 and previous P = d+2 party is degree two, but no product mixes values of two
holders that each need the other's: it becomes a replicated share in *one* round, with
no resharing round before it (the way ABY3 §5.3 first reshares the dealer's sum) and
none after (the 3-out-of-3 products of an AND or multiplication):

    D -> P: A_j  = alpha_j - m_j       D -> N: A'_j = alpha_j - m'_j
    N -> P: C_o  = sum_j m_j beta_{o,j} - t_o
    P -> N: C'_o = sum_j m'_j beta_{o,j} - r_o

with m, t from the D-N key and m', r from the D-P key.  The components become
c_d = r_o, c_{d+1} = t_o and c_{d+2} = e_o, where P computes
e_o = sum_j A_j beta_{o,j} + C_o - r_o + gamma_o and N computes
e_o = sum_j A'_j beta_{o,j} + C'_o - t_o + gamma_o: both equal y_o - r_o - t_o.  Every
message depends on its sender's own knowledge only, so all four leave at once.  Over
XOR sharing the same holds with XOR for + and -, and AND for the products.

Security (semi-honest, one corruption): P sees A (uniform: m is fresh and from a key P
lacks) and C (uniform: t is fresh, from the same key, independent of m); N sees A' and
C' (uniform through m' and r, from the D-P key N lacks); D receives nothing.  Each
party's output pair (r, t), (t, e) or (e, r) is uniform given its view, as for a
reshared product.  All randomness is AES-CTR from the pairwise keys; both holders of a
key draw from it in the same order (part, then m before t, m' before r).

Load: the elements are split into thirds (:func:`thirds`) and every party is the dealer
of one, so the parties send equal bytes (up to the rounding of the thirds).  Per element, the
dealer sends 2J words and each neighbour O words (J alphas, O outputs): averaged over
the roles, (2J + 2O) / 3 words per element per party.  Cost: 1 round.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from veil.mpc.lockstep import RoundLink, Steps, run_alone
from veil.mpc.party import Party

DEALER, NEXT = 0, 1
Alphas = Callable[[slice], torch.Tensor]
"""The dealer's (J, k) alphas on a part of the elements."""
Betas = Callable[[slice, int], tuple[torch.Tensor, torch.Tensor]]
"""A neighbour's (O, J, k) betas and (O, k) gammas on a part, given its role."""


def dealer_and_neighbour(data: torch.Tensor, role: int) -> torch.Tensor:
    """This party's side of the split of a share's (2, ...) components.

    The dealer's is x_d + x_{d+1} (its own two components: ``data[0] + data[1]``; for
    XOR sharing use :func:`xor_split`); a neighbour's is x_{d+2}, its second component
    at N = d+1 and its first at P = d+2.
    """
    if role == DEALER:
        return data[0] + data[1]
    return data[1] if role == NEXT else data[0]


def xor_split(data: torch.Tensor, role: int) -> torch.Tensor:
    """:func:`dealer_and_neighbour` for XOR sharing."""
    if role == DEALER:
        return data[0] ^ data[1]
    return data[1] if role == NEXT else data[0]


def thirds(n: int, party: Party, align: int = 1) -> list[tuple[slice, int]]:
    """The elements in three parts of whole multiples of ``align``, with this party's role
    ((rank - j) mod 3: 0 on the part it leads, 1 and 2 on the others).

    Part j is led by party j (the dealer here, truncation's A), so every party plays each
    role on a part and each sends the same bytes in every call, up to the rounding of the
    parts.  The assignment is fixed, not rotated per call, so a party's bytes depend on the
    shapes only (identical layers cost identical bytes at each party, which the dry-run
    estimate relies on).  Bit-sliced callers align to 64 elements, so that only the last
    part fills a word partly; below three words the parts are not aligned (each then fills
    a word partly, but every party still deals its share of a small call).
    """
    if n < 3 * align:
        align = 1
    units = -(-n // align)
    bounds = [min(n, align * (units * j // 3)) for j in range(4)]
    return [
        (slice(bounds[j], bounds[j + 1]), (party.rank - j) % 3)
        for j in range(3)
        if bounds[j + 1] > bounds[j]
    ]


def _sum_products(a: torch.Tensor, beta: torch.Tensor, boolean: bool) -> torch.Tensor:
    """sum_j a_j beta_{o,j}: (J, k) with (O, J, k) -> (O, k)."""
    if not boolean:
        return (a.unsqueeze(0) * beta).sum(1)
    terms = a.unsqueeze(0) & beta
    while terms.shape[1] > 1:  # XOR-fold the j axis in halves: log2(J) operations, not J
        half = terms.shape[1] // 2
        folded = terms[:, :half] ^ terms[:, half:2 * half]
        terms = torch.cat((folded, terms[:, 2 * half:]), dim=1) if terms.shape[1] % 2 else folded
    return terms[:, 0]


def cross_products(party: Party, n: int, widths: Callable[[slice], int], rows: int, outputs: int,
                   alphas: Alphas, betas: Betas, boolean: bool, align: int = 1) -> list[tuple[slice, torch.Tensor]]:
    """Replicated shares of y_o = sum_j alpha_j beta_{o,j} + gamma_o, in one round.

    The n elements are cut into :func:`thirds` (aligned to ``align``); on each part the callbacks give this
    party's side for its role there (the dealer's ``alphas(part)``, a neighbour's
    ``betas(part, role)``), over ``widths(part)`` words each.  Returns, per part, the
    part and this party's (2, O, k) components.
    """
    return run_alone(party, lambda link: cross_products_steps(
        link, n, widths, rows, outputs, alphas, betas, boolean, align))


def cross_products_steps(link: RoundLink, n: int, widths: Callable[[slice], int], rows: int, outputs: int,
                         alphas: Alphas, betas: Betas, boolean: bool,
                         align: int = 1) -> Steps[list[tuple[slice, torch.Tensor]]]:
    """:func:`cross_products` as steps (:mod:`veil.mpc.lockstep`)."""
    party = link.party
    parts = [(part, role, widths(part)) for part, role in thirds(n, party, align)]
    sub = (lambda u, v: u ^ v) if boolean else (lambda u, v: u - v)
    outbox, kept = link.outbox, []
    for part, role, k in parts:
        if role == DEALER:
            alpha = alphas(part)
            m, t = party.random_next((rows, k)), party.random_next((outputs, k))
            m2, r = party.random_prev((rows, k)), party.random_prev((outputs, k))
            outbox.add(party.prev_rank, sub(alpha, m))
            outbox.add(party.next_rank, sub(alpha, m2))
            kept.append((r, t))
        else:
            beta, gamma = betas(part, role)
            draw = party.random_prev if role == NEXT else party.random_next
            mask, own = draw((rows, k)), draw((outputs, k))  # (m, t) at N, (m', r) at P
            peer = party.next_rank if role == NEXT else party.prev_rank
            outbox.add(peer, sub(_sum_products(mask, beta, boolean), own))
            kept.append((beta, gamma, own))
    yield
    inbox = link.inbox
    out = []
    for (part, role, k), state in zip(parts, kept):
        if role == DEALER:
            r, t = state
            out.append((part, torch.stack((r, t))))
            continue
        beta, gamma, own = state
        dealer, other = (party.prev_rank, party.next_rank) if role == NEXT else (party.next_rank, party.prev_rank)
        masked = inbox.take(dealer, rows * k).reshape(rows, k)
        correction = inbox.take(other, outputs * k).reshape(outputs, k)
        total = _sum_products(masked, beta, boolean)
        e = (total ^ correction ^ own ^ gamma) if boolean else (total + correction - own + gamma)
        out.append((part, torch.stack((own, e)) if role == NEXT else torch.stack((e, own))))
    return out
