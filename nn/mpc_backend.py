"""The MPC backend: the models' calls on secret shares, one protocol each.

Every party runs the same model code with its own :class:`MPCBackend`; parameters and
activations are :class:`mpc.ArithShare` values (weights shared once with
:func:`share_weights`), masks and positions stay public, and each ``ops`` call below is
one protocol of :mod:`protocols.approx`.  Token ids are integer shares; the next token in
generation stays a secret one-hot (see :mod:`nn.generate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import mpc
from mpc import ArithShare, Party
from nn.modules import Module
from protocols.approx.argmax import argmax
from protocols.approx.embedding import embedding, embedding_onehot
from protocols.approx.gelu import gelu
from protocols.approx.layernorm import layernorm, rmsnorm
from protocols.approx.silu import silu
from protocols.approx.softmax import softmax
from protocols.approx.tanh import tanh


def share_weights(model: Module, party: Party, owner: int = 0) -> Module:
    """Secret-share every parameter of ``model`` from party ``owner``, in place.

    Only the owner's float values are used: the other parties need a model of the same
    architecture (e.g. built from the public config with any weights) for the shapes'
    sake, and their floats are dropped unread.  Tied parameters are shared once.
    """
    return model.map_params(lambda t: mpc.share(party, t if party.rank == owner else None, owner))


class MPCBackend:
    """:class:`nn.backend.Backend` over replicated secret shares at one party.

    ``input_owner`` is the party that secret-shares the token ids (in a deployment the
    client deals them from outside instead).
    """

    def __init__(self, party: Party, input_owner: int = 0):
        self.party = party
        self.input_owner = input_owner

    def private_ids(self, ids: torch.Tensor) -> ArithShare:
        value = ids if self.party.rank == self.input_owner else None
        return mpc.share(self.party, value, self.input_owner)

    def reveal(self, x: ArithShare) -> torch.Tensor:
        """Open ``x`` at every party (the simulation's stand-in for sending it to the client)."""
        return mpc.reveal(x)

    def cat(self, xs: Sequence[ArithShare], dim: int) -> ArithShare:
        return mpc.cat(list(xs), dim)

    def gelu(self, x: ArithShare, approximate: str = "none") -> ArithShare:
        return gelu(x)

    def silu(self, x: ArithShare) -> ArithShare:
        return silu(x)

    def tanh(self, x: ArithShare) -> ArithShare:
        return tanh(x)

    def softmax(self, x: ArithShare, dim: int = -1, mask: torch.Tensor | None = None) -> ArithShare:
        if dim not in (-1, x.ndim - 1):
            raise ValueError("the softmax protocol works over the last dim only")
        return softmax(x, mask)

    def layernorm(
        self, x: ArithShare, weight: ArithShare, bias: ArithShare, eps: float
    ) -> ArithShare:
        return layernorm(x, weight, bias, eps)

    def rmsnorm(self, x: ArithShare, weight: ArithShare, eps: float) -> ArithShare:
        return rmsnorm(x, weight, eps)

    def embedding(self, ids: ArithShare, table: ArithShare) -> ArithShare:
        return embedding(ids, table)

    def embedding_onehot(self, onehot: ArithShare, table: ArithShare) -> ArithShare:
        return embedding_onehot(onehot, table)

    def argmax(self, x: ArithShare) -> tuple[ArithShare, ArithShare]:
        return argmax(x)
