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


def test_fused_truncation_takes_a_shift_per_element_and_zero_is_exact(run, rng):
    """truncate_product on products cut by 0, 5 and 18 bits in one call: shift 0 reshares
    exactly, the others give floor + {0, 1}."""
    from veil.protocols.multiplication import local_product
    from veil.protocols.truncation import truncate_product

    x = torch.randint(-2**20, 2**20, (300,), generator=rng)
    y = torch.randint(-2**20, 2**20, (300,), generator=rng)
    shifts = torch.tensor([0, 5, 18]).repeat(100)

    def fn(party):
        xs, ys = mpc.share(party, x, 0), mpc.share(party, y, 1)
        xs.frac_bits = ys.frac_bits = 0  # integers: the ring values are the numbers
        z = local_product(xs.data, ys.data)
        return truncate_product(party, z, shifts, 18).data

    opened = sum(data[0] for data in run(fn))  # the parties' first components add up
    exact = x * y
    floor = torch.div(exact, 2**shifts, rounding_mode="floor")
    error = opened - floor
    assert (error[shifts == 0] == 0).all()
    assert error.min() >= 0 and error.max() <= 1


def test_fused_truncation_refuses_a_shift_outside_the_range(run):
    from veil.protocols.truncation import truncate_product

    with pytest.raises(ValueError, match="0..61"):
        run(lambda p: truncate_product(p, torch.zeros(3, dtype=torch.int64), torch.tensor([0, 62, 1]), 62))


@pytest.mark.parametrize("fused", [False, True], ids=["truncate", "truncate_product"])
def test_truncation_sends_one_message_per_peer_per_round(fused, rng):
    """Each party sends one message to each peer in each of the 2 rounds (4 in all), with
    the bytes of the protocol (16, or 64/3 fused, per element per party in total)."""
    from veil.protocols.multiplication import local_product
    from veil.protocols.truncation import truncate_product

    n = 300
    x = torch.randint(-2**20, 2**20, (n,), generator=rng)

    def fn(party):
        xs = mpc.share(party, x, 0)
        xs.frac_bits = BITS
        party.comm.reset_counters()
        if fused:
            truncate_product(party, local_product(xs.data, xs.data), BITS, 2 * BITS)
        else:
            truncate(xs, BITS)
        return party.comm.stats.total("trunc")

    traffic = mpc.simulate(fn)
    assert [t.messages_sent for t in traffic] == [4, 4, 4]
    assert [t.rounds for t in traffic] == [2, 2, 2]
    assert sum(t.bytes_sent for t in traffic) == n * 8 * (8 if fused else 6)
