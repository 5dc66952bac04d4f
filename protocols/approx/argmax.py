"""Secret argmax over the last dimension (greedy decoding): one-hot and shared index.

Formula: the tree of all-pairs tournaments of
:func:`veil.protocols.reductions.grouped_max_with_argmax` (each level one comparison depth,
the widths planned for the fewest rounds within the byte budget,
:func:`veil.protocols.reductions.plan_for`; the one-hot is rebuilt top-down from the
groups' winners), then index = sum_v onehot_v * v, a public-integer dot product (free).
Ties go to the lowest index, like torch.argmax.

Valid range: |x_i - x_j| < 2^(63-f).
Error: exact whenever the top two logits differ by more than one ulp (2^-f).
Cost for n = 49152 per row, per party (``python -m benchmarks.nonlinear --only argmax``,
Dec 7): levels of 3, 32 and 512 candidates (7 + 11 + 15 critical-path rounds: a boolean
MSB, 5, the AND tree on packed words, 1 to 9, and the bit injection of the winner, 1) plus 3
for the one-hot: 36 rounds, 14.51 MB measured.  Before (levels of 8, unpacked ANDs): 57
rounds, 10.27 MB; the binary tree of ``max_with_argmax``: 112 rounds, 3.42 MB.
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare
from veil.protocols.reductions import grouped_max_with_argmax


def argmax_twin(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float twin of :func:`argmax`: (one-hot, index)."""
    index = x.argmax(dim=-1)
    return torch.nn.functional.one_hot(index, x.shape[-1]).to(torch.int64), index


def argmax(x: ArithShare) -> tuple[ArithShare, ArithShare]:
    """(secret one-hot (..., n), secret integer index (...)) of the maximum along the last dim."""
    with x.party.comm.scope("argmax"):
        _, onehot = grouped_max_with_argmax(x)
    return onehot, onehot_index(onehot)


def onehot_index(onehot: ArithShare) -> ArithShare:
    """sum_v onehot_v * v: the secret integer index of a secret one-hot (free)."""
    positions = torch.arange(onehot.shape[-1], dtype=torch.int64, device=onehot.device)
    return (onehot * positions).sum(-1)
