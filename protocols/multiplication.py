"""Multiplication and matrix multiplication of replicated shares (ABY3, §3).

Each party computes a 3-out-of-3 share of the product locally,

    z_i = x_i * (y_i + y_{i+1}) + x_{i+1} * y_i + alpha_i      (alpha: a zero-sharing)

and sends z_i to party i-1; its new replicated share is (z_i, z_{i+1}).  The zero
sharing makes the message uniformly random to its receiver.

Cost: 1 round; one ring element (8 bytes) per *output* element per party.  A product of
two fixed-point operands is truncated from its 3-out-of-3 components by
:func:`veil.protocols.truncation.truncate_product` instead of being reshared: 2 rounds in
all, 64/3 bytes per output element per party.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.party import Party
from veil.mpc.ring_matmul import ring_matmul
from veil.mpc.shape_ops import aligned_pair
from veil.protocols.truncation import truncate_product


def reshare(party: Party, z: torch.Tensor) -> torch.Tensor:
    """3-out-of-3 additive shares -> replicated (z_i, z_{i+1}); one round.

    The caller must already have masked ``z`` with a zero-sharing.
    """
    out = torch.empty(2, *z.shape, dtype=z.dtype, device=z.device)
    out[0] = z
    out[1] = party.comm.send_prev_recv_next(z)
    return out


def local_product(x_data: torch.Tensor, y_data: torch.Tensor,
                  local: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.mul) -> torch.Tensor:
    """This party's 3-out-of-3 component x_i y_i + x_i y_{i+1} + x_{i+1} y_i (no messages).

    Sums the components of the smaller operand (a weight matrix would be summed once per
    call otherwise).  Unmasked: reshare it with a zero-sharing, or truncate it with
    :func:`veil.protocols.truncation.truncate_product`.
    """
    if x_data[0].numel() < y_data[0].numel():
        z = local(x_data[0] + x_data[1], y_data[0])
        z += local(x_data[0], y_data[1])
    else:
        z = local(x_data[0], y_data[0] + y_data[1])
        z += local(x_data[1], y_data[0])
    return z


def _product(x: ArithShare, y: ArithShare, local: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             name: str, x_data: torch.Tensor, y_data: torch.Tensor) -> ArithShare:
    party = x.party
    frac = x.frac_bits + y.frac_bits
    excess = frac - party.fxp.frac_bits
    with party.comm.scope(name):
        z = local_product(x_data, y_data, local)
        if excess > 0:
            return truncate_product(party, z, excess, frac)
        z += party.zero_share(z.shape)
        data = reshare(party, z)
    return ArithShare(party, data, frac)


def mul(x: ArithShare, y: ArithShare) -> ArithShare:
    """Elementwise x * y with torch broadcasting; truncated if both are fixed point."""
    x_data, y_data = aligned_pair(x, y)
    return _product(x, y, torch.mul, "mul", x_data, y_data)


def matmul(x: ArithShare, y: ArithShare) -> ArithShare:
    """x @ y with torch.matmul semantics; truncated if both are fixed point."""
    inner_y = y.shape[-2] if y.ndim >= 2 else y.shape[-1] if y.ndim else None
    if x.ndim == 0 or inner_y is None or x.shape[-1] != inner_y:
        raise ValueError(f"matmul shape mismatch: {tuple(x.shape)} @ {tuple(y.shape)}")
    return _product(x, y, ring_matmul, "matmul", x.data, y.data)
