"""Secret argmax over the last dimension (greedy decoding): one-hot and shared index.

Formula: the tree reduction of :func:`veil.protocols.reductions.max_with_argmax` (pairwise
comparisons and multiplexers, log2(n) levels; the one-hot is rebuilt top-down from the kept
comparison bits), then index = sum_v onehot_v * v, a public-integer dot product (free).
Ties go to the lowest index, like torch.argmax.

Valid range: |x_i - x_j| < 2^(63-f).
Error: exact whenever the top two logits differ by more than one ulp (2^-f).
Cost for n = 49152 per row, per party: 16 levels of one comparison and one multiplexer
(11 rounds each) plus 15 rounds for the one-hot: 191 rounds, about 64 bytes per element
(n - 1 comparisons at 47.5 bytes, n - 1 multiplexers and the one-hot's products at 8 bytes
each; 3.13 MB measured).
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare
from veil.protocols.reductions import max_with_argmax


def argmax_twin(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float twin of :func:`argmax`: (one-hot, index)."""
    index = x.argmax(dim=-1)
    return torch.nn.functional.one_hot(index, x.shape[-1]).to(torch.int64), index


def argmax(x: ArithShare) -> tuple[ArithShare, ArithShare]:
    """(secret one-hot (..., n), secret integer index (...)) of the maximum along the last dim."""
    with x.party.comm.scope("argmax"):
        _, onehot = max_with_argmax(x, -1)
    return onehot, onehot_index(onehot)


def onehot_index(onehot: ArithShare) -> ArithShare:
    """sum_v onehot_v * v: the secret integer index of a secret one-hot (free)."""
    positions = torch.arange(onehot.shape[-1], dtype=torch.int64, device=onehot.device)
    return (onehot * positions).sum(-1)
