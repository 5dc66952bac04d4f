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
