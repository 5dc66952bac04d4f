"""tanh(x) from exp and one reciprocal (for BERT's pooler).

Formula: tanh(x) = s * (2 / (1 + e) - 1) with s = sign(x), e = exp(-2|x|) in (0, 1],
so the reciprocal's argument 1 + e lies in [1, 2] whatever x is, and exp only ever sees
non-positive inputs (|x| > 7 clips e to 0 and gives exactly s).
Source: the identity tanh(x) = (1 - e^-2|x|) / (1 + e^-2|x|) * sign(x), composed from
this package's :func:`~veil.protocols.approx.exp.exp` and
:func:`~veil.protocols.approx.reciprocal.reciprocal` (as CrypTen composes tanh from sigmoid).

Valid range: all |x| < 2^(63-f) (in practice any activation).
Error: twin vs torch.tanh: at most 2 * (exp's 2.4e-4) + 2 * (reciprocal's 6e-5) ~ 6e-4;
measured 5e-4 over [-10, 10] (tests/protocols/test_approx_tanh.py). Protocol vs twin: a few ulp.
Cost: one comparison (10 rounds, 47.5 B), two sign products (1 round, 8 B each), exp
(27 rounds, 199.5 B) and a reciprocal over a 2-position window (21 rounds, one comparison
and 128 B: 175.5 B): 60 rounds and 438.5 bytes per element per party (measured, busiest
party).
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare
from veil.protocols.approx.exp import exp, exp_twin
from veil.protocols.approx.reciprocal import reciprocal, reciprocal_twin
from veil.protocols.comparison import less_than

RECIPROCAL_WINDOW = (0, 2)
"""1 + e lies in [1, 2]: the reciprocal only has to search [2^0, 2^2)."""


def tanh_twin(x: torch.Tensor) -> torch.Tensor:
    """Float twin of :func:`tanh`."""
    x = x.to(torch.float64)
    sign = torch.where(x < 0, -1.0, 1.0).to(torch.float64)
    e = exp_twin(-2 * (sign * x))
    return sign * (2 * reciprocal_twin(1 + e, *RECIPROCAL_WINDOW) - 1)


def tanh(x: ArithShare) -> ArithShare:
    """tanh of a secret fixed-point tensor (see the module docstring)."""
    with x.party.comm.scope("tanh"):
        sign = 1 - 2 * less_than(x, 0)  # integer +-1
        magnitude = sign * x  # integer times fixed point: no truncation
        e = exp(magnitude * -2)
        t = reciprocal(e + 1, *RECIPROCAL_WINDOW) * 2 - 1
        return sign * t
