"""The default program of ``veil party``: prove that the cluster computes correctly.

Each party secret-shares a value it knows, the parties multiply two of them under
MPC (one resharing round over every link) and open the product.  Every party
checks the result against the inputs it was told, so a wrong key, a bad link or a
misconfigured peer fails loudly at start-up rather than during an inference.
"""

from __future__ import annotations

import torch

from veil import mpc
from veil.mpc.party import Party

_INPUTS = (torch.tensor([1.5, -2.0, 0.25]), torch.tensor([4.0, 0.5, -8.0]))
_TOLERANCE = 1e-3


def check(party: Party) -> str:
    """Multiply party 0's and party 1's inputs under MPC; return a one-line report."""
    a = mpc.share(party, _INPUTS[0] if party.rank == 0 else None, owner=0)
    b = mpc.share(party, _INPUTS[1] if party.rank == 1 else None, owner=1)
    product = mpc.reveal(a * b)
    expected = _INPUTS[0] * _INPUTS[1]
    if not torch.allclose(product.to("cpu", torch.float64), expected.double(), atol=_TOLERANCE):
        raise RuntimeError(
            f"health check failed: got {product.tolist()}, expected {expected.tolist()}"
        )
    total = party.comm.stats.total()
    return (
        f"party {party.rank}: health check ok ({total.bytes_sent} bytes sent, "
        f"{total.rounds} rounds)"
    )
