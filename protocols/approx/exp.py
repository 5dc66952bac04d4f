"""exp(x) for x <= 0: PUMA's clipped limit formula, with a quadratic first step.

Formula (``base="quadratic"``, the default): with y = x / 2^t,
    exp(x) ~ p(y)^(2^t),  p(y) = 1 + y + y^2/2 = ((1 + y)^2 + 1) / 2,
and 0 for x < -14 (PUMA's clip; exp(-14) = 8.3e-7).  ``base="linear"`` is PUMA's and
CrypTen's (1 + x/2^t)^(2^t) (arXiv 2307.12533 §4; SPU ``exp_taylor_series``).

Why quadratic: log p(y) = y - y^3/6 + O(y^4), so the relative error is about
-x^3 / (6 * 4^t) instead of the linear base's -x^2 / 2^(t+1).  For the same number of
squarings it is far more accurate.  Measured (errors: float64 twin with f = 18 rounding;
softmax on 12x128x128 rows of logits ~ N(0, 3^2), causal rows alike; cost per element per
party with the clip / without it, from the communicator counters):

    variant                products  rounds   bytes          exp err [-14, 0]  softmax err
    linear,    t = 5 (PUMA)    5      11 / 10  154.3 / 106.7   8.6e-3          6.6e-2
    linear,    t = 8           8      17 / 16  218.3 / 170.7   1.1e-3          8.2e-3
    quadratic, t = 4           5      11 / 10  154.3 / 106.7   1.0e-3          2.0e-2
    quadratic, t = 5           6      13 / 12  175.6 / 128     2.4e-4          4.0e-3  <- default
    quadratic, t = 6           7      15 / 14  196.9 / 149.3   1.5e-4          9.2e-4  <- softmax's
    quadratic, t = 7           8      17 / 16  218.3 / 170.7   3.0e-4          2.3e-4

(rounds: critical path, with the clip / without; every product is truncated from its
3-out-of-3 components, 2 rounds and 21.3 bytes, see protocols/truncation.py; the clip's
comparison runs beside the squarings and adds only its multiplexer's round.  Before that,
the clip added 6 rounds: 18 for quadratic t = 5)

So quadratic t = 5 meets the softmax bound (0.01) with 2.5x margin for one product more
than PUMA's t = 5 (and two fewer than linear t = 8, the cheapest linear variant that
passes, and that one only just).  No variant needs a separate truncation for x / 2^t: x is
read with f + t fractional bits (free) and the first product is truncated by f + 2t.

Valid range: any x <= 0 (x < -14 gives exactly 0 through the multiplexer, whatever the
squarings produced).  Without the clip (``clip=None``) the quadratic base is accurate
(measured max abs error) on [-50, 0] for t = 5 (2.4e-4), [-120, 0] for t = 6 (3.4e-4),
[-220, 0] for t = 7 (2.3e-4), and garbage below -2^(t+1) where |1 + x/2^t| > 1; that
variant needs a caller that bounds x, e.g. softmax logits with a known spread.
Error: twin vs exp: the table above; protocol vs twin: at most about 2^(t+1) ulp (each
truncation is off by at most one ulp, and every later squaring doubles a relative error);
measured 1.1e-4 for t = 5.
Cost: the table above (quadratic t = 5: 6 products with truncation, 128 bytes; the
clip's MSB, 5 rounds beside the squarings and 26.3 bytes, kept boolean into one multiplexer by bit injection,
1 round and 21.3 bytes, :func:`veil.protocols.select.mux_bits`; measured 176.2 bytes for
2003 elements).  ``untruncated=True``
leaves the last product untruncated (8 instead of 21.3 bytes, 1 round instead of 2) for a
caller that multiplies the result again (softmax).
"""

from __future__ import annotations

import torch

from veil.mpc.arith import ArithShare
from veil.mpc.lockstep import RoundLink, Steps, lockstep, run_alone
from veil.protocols.approx._common import FRAC_BITS, products_steps, quantize, with_frac
from veil.protocols.comparison import less_than_bits_steps
from veil.protocols.select import mux_bits

EXP_CLIP = -14.0
"""Below this exp(x) is taken as 0 (PUMA's T_exp)."""
DEFAULT_SQUARINGS = 5
BASES = ("quadratic", "linear")


def exp_twin(
    x: torch.Tensor,
    squarings: int = DEFAULT_SQUARINGS,
    base: str = "quadratic",
    clip: float | None = EXP_CLIP,
    frac_bits: int | None = FRAC_BITS,
    untruncated: bool = False,
) -> torch.Tensor:
    """Float twin of :func:`exp` (rounded where the protocol truncates)."""
    if base not in BASES:
        raise ValueError(f"unknown exp base {base!r}: expected one of {BASES}")
    x = x.to(torch.float64)
    z = 1 + x / 2**squarings
    if base == "quadratic":
        z = (quantize(z * z, frac_bits) + 1) / 2
    last_bits = None if frac_bits is None or untruncated else frac_bits
    for step in range(squarings):
        z = quantize(z * z, last_bits if step == squarings - 1 else frac_bits)
    if clip is not None:
        z = torch.where(x < clip, torch.zeros_like(z), z)
    return z


def exp(
    x: ArithShare,
    squarings: int = DEFAULT_SQUARINGS,
    base: str = "quadratic",
    clip: float | None = EXP_CLIP,
    untruncated: bool = False,
) -> ArithShare:
    """exp(x) for secret x <= 0 (see the module docstring for range, error and cost).

    ``untruncated=True`` returns the last square before its truncation, with 2f fractional
    bits, for a caller that multiplies it again and pays one truncation for both (softmax).
    The clip's comparison runs beside the squarings (:mod:`veil.mpc.lockstep`): it depends
    on x alone, so its 5 rounds share the squarings' rounds.
    """
    if base not in BASES:
        raise ValueError(f"unknown exp base {base!r}: expected one of {BASES}")
    party = x.party
    f = party.fxp.frac_bits
    if x.frac_bits != f:
        raise ValueError("exp expects a fixed-point share with f fractional bits")
    with party.comm.scope("exp"):
        def powers(link: RoundLink) -> Steps[ArithShare]:
            return _limit_steps(link, x, squarings, base, untruncated)

        if clip is None:
            return run_alone(party, powers)
        z, below = lockstep(party, powers, lambda link: less_than_bits_steps(link, x, clip))
        return mux_bits(below, 0, z)


def _limit_steps(link: RoundLink, x: ArithShare, squarings: int, base: str, untruncated: bool) -> Steps[ArithShare]:
    """p(x / 2^t)^(2^t) as steps: the first step and the t squarings."""
    f = link.party.fxp.frac_bits
    # 1 + x / 2^t, read with f + t fractional bits: no truncation needed.
    z = with_frac(x, f + squarings) + 1
    if base == "quadratic":
        (z,) = yield from products_steps(link, [(z, z)])  # (1 + y)^2, truncated by f + 2t
        # p = ((1 + y)^2 + 1) / 2: reading it with f + 1 bits halves it for free.
        z = with_frac(z + 1, f + 1)
    for step in range(squarings):
        last = step == squarings - 1
        (z,) = yield from products_steps(link, [(z, z)], out_frac=[2 * f if last and untruncated else f])
    return z
