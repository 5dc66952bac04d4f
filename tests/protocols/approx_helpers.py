"""Helpers for the approximation tests: run a protocol on shared inputs, with its cost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from veil import mpc
from veil.mpc.communicator import Traffic

FXP = mpc.FixedPoint()
ULP = 2.0**-FXP.frac_bits


def on_grid(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the fixed-point grid (what sharing it encodes)."""
    return FXP.decode(FXP.encode(x))


def msb_bytes(n: int) -> int:
    """Bytes the three parties send together for the MSB of n elements (protocols/carry.py):
    per 64 elements (the thirds are whole words but the last; below 192 elements each third
    is rounded up to a word), the cross products (2 x 15 one-hot rows of 16 nibble words
    from the dealer, 2 x 16 words from each neighbour) and the carry tree (29 rows at each
    party)."""
    return 8 * (2 * 15 * 16 + 2 * 2 * 16 + 3 * 29) * msb_words(n)


def msb_words(n: int) -> int:
    """64-element words per party-row of the bit-sliced MSB of n elements, all thirds together."""
    if n < 3 * 64:
        return sum(-(-(n * (j + 1) // 3 - n * j // 3) // 64) for j in range(3))
    return -(-n // 64)


def fused_comparison_bytes(n: int) -> int:
    """Bytes the three parties send together for ``less_than(..., fused_root=True)`` of n
    elements: the MSB without the tree's last AND row (8 bytes per word at each party), then
    the root's cross products (14 ring elements from the dealer, one from each neighbour)."""
    return msb_bytes(n) - 8 * 3 * msb_words(n) + 8 * 16 * n


def comparison_bytes(n: int) -> int:
    """Bytes the three parties send together for one comparison of n elements with its B2A
    (two ring elements from the dealer, one from each neighbour, per element)."""
    return msb_bytes(n) + 8 * 4 * n


def run_protocol(
    protocol: Callable[..., Any], *inputs: Any, fxp: mpc.FixedPoint | None = None, **kwargs: Any
) -> tuple[Any, Traffic]:
    """Share each tensor input (floats as fixed point, ints as integers; None passes through),
    run ``protocol`` on the shares, and return party 0's opened result and its traffic with
    ``bytes_sent`` replaced by the sum over the three parties (a fused truncation's helper
    sends more than the other two and the roles rotate, so one party's bytes depend on the
    call count; the sum does not)."""

    def fn(party: mpc.Party) -> tuple[Any, Traffic]:
        shares = [
            mpc.share(party, x, owner=0) if isinstance(x, torch.Tensor) else x for x in inputs
        ]
        party.comm.stats.by_scope.clear()
        out = protocol(*shares, **kwargs)
        traffic = party.comm.stats.total()
        opened = tuple(o.reveal() for o in out) if isinstance(out, tuple) else out.reveal()
        return opened, traffic

    results = mpc.simulate(fn, fxp=fxp)
    opened, traffic = results[0]
    traffic.bytes_sent = sum(t.bytes_sent for _, t in results)
    return opened, traffic


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Upper tail of Pearson's statistic for ``counts`` drawn from ``probs``, over the cells of
    positive probability (the caller checks that the others were never drawn)."""
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    statistic = ((counts[keep] - expected) ** 2 / expected).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2), statistic / 2))
