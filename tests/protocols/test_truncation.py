"""Precise truncation: never an error above 1 ulp inside |x| < 2^62 (ring units)."""

import pytest
import torch

from veil import mpc
from veil.mpc.prg import AesPrg, new_key
from veil.protocols.truncation import truncate

TOP = 2**62
BITS = 18


def _truncate_ring_values(party, values, rounds):
    """Share integer ring values, truncate by BITS, return the opened error vs floor."""
    errors = []
    for chunk in values.chunk(rounds):
        x = mpc.share(party, chunk, owner=0)
        x.frac_bits = BITS  # read the ring values as fixed point with BITS fractional bits
        y = truncate(x, BITS)
        assert y.frac_bits == 0
        errors.append(y.reveal() - torch.div(chunk, 2**BITS, rounding_mode="floor"))
    return torch.cat(errors)


def test_ten_million_truncations_at_the_top_of_the_range_have_no_large_error(run):
    """10^7 values with |x| in [2^61, 2^62): floor(x / 2^18) + {0, 1}, never more."""
    prg = AesPrg(new_key())
    raw = prg.random_int64((10_000_000,))
    magnitude = (raw & ((1 << 61) - 1)) | (1 << 61)  # |x| in [2^61, 2^62)
    values = torch.where(raw < 0, -magnitude, magnitude)
    values[:4] = torch.tensor([TOP - 1, -TOP, 0, -1])

    def fn(party):
        return _truncate_ring_values(party, values, rounds=10)

    diff = run(fn)[0]
    assert diff.numel() == 10_000_000
    assert int(diff.min()) >= 0 and int(diff.max()) <= 1


def test_fixed_point_products_are_truncated_within_one_ulp(run, rng):
    x = torch.randn(1000, generator=rng, dtype=torch.float64) * 1000
    y = torch.randn(1000, generator=rng, dtype=torch.float64) * 10

    def fn(party):
        return (mpc.share(party, x, 0) * mpc.share(party, y, 1)).reveal()

    fxp = mpc.FixedPoint()
    exact = fxp.decode(fxp.encode(x)) * fxp.decode(fxp.encode(y))
    assert (run(fn)[0] - exact).abs().max() <= 2.0**-18


def test_bad_shift_rejected(run):
    with pytest.raises(ValueError, match="outside 1..61"):
        run(lambda p: truncate(mpc.share(p, torch.ones(1), 0), 62))
