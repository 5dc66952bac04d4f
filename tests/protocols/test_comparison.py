"""A2B, MSB, B2A, comparisons, equality, mux, ReLU, max and argmax vs plaintext."""

import pytest
import torch

from veil import mpc
from veil.mpc import BoolShare
from veil.protocols.boolean import and_shares
from veil.protocols.comparison import less_than
from veil.protocols.conversions import a2b, b2a_bit, msb
from veil.protocols.reductions import max_with_argmax
from veil.protocols.select import mux_bits

EDGE = torch.tensor([0.0, 1e-5, -1e-5, 2.0**-18, -(2.0**-18), 1e6, -1e6, 2.0**43, -(2.0**43), 3.0, -3.0],
                    dtype=torch.float64)


def values(rng, n=200):
    body = torch.randn(n, generator=rng, dtype=torch.float64) * torch.logspace(-4, 6, n, dtype=torch.float64)
    return torch.cat([EDGE, body])


def test_a2b_gives_the_twos_complement_words(run, rng):
    ring = torch.randint(-(2**63), 2**63 - 1, (500,), generator=rng)

    def fn(party):
        return a2b(mpc.share(party, ring, owner=1)).reveal()

    assert torch.equal(run(fn)[0], ring)


def test_boolean_ops(run, rng):
    a = torch.randint(-(2**63), 2**63 - 1, (64,), generator=rng)
    b = torch.randint(-(2**63), 2**63 - 1, (64,), generator=rng)

    def fn(party):
        sa = BoolShare.from_public(party, torch.zeros(64, dtype=torch.int64)) ^ a2b(mpc.share(party, a, 0))
        sb = a2b(mpc.share(party, b, 2))
        return [x.reveal() for x in (sa & sb, sa | sb, sa ^ sb, ~sa, sa << 5, sa >> 7, sa & 0xFF, sa ^ b)]

    got = run(fn)[0]
    logical = (a >> 7) & ((1 << 57) - 1)
    for g, e in zip(got, [a & b, a | b, a ^ b, ~a, a << 5, logical, a & 0xFF, a ^ b]):
        assert torch.equal(g, e)


def test_msb_and_b2a(run, rng):
    x = values(rng)

    def fn(party):
        s = mpc.share(party, x, 0)
        return msb(s).reveal(), b2a_bit(msb(s)).reveal()

    bits, arith = run(fn)[0]
    assert torch.equal(bits, (x < 0).long())
    assert torch.equal(arith, (x < 0).long())


def test_comparisons_with_secret_and_public_operands(run, rng):
    x, y = values(rng), values(rng).flip(0)
    y[:5] = x[:5]  # equal pairs

    def fn(party):
        sx, sy = mpc.share(party, x, 0), mpc.share(party, y, 1)
        outs = [sx < sy, sx > sy, sx <= sy, sx >= sy, sx.eq(sy), sx < 0.5, sx > 0, sx.eq(x), sx.eq(3.0)]
        return [o.reveal() for o in outs]

    got = run(fn)[0]
    expected = [x < y, x > y, x <= y, x >= y, x == y, x < 0.5, x > 0, torch.ones_like(x, dtype=torch.bool), x == 3.0]
    for i, (g, e) in enumerate(zip(got, expected)):
        assert torch.equal(g, e.long()), i


def test_equality_of_integer_ids_against_vocabulary(run):
    ids = torch.tensor([[0, 7, 30521]])
    vocab = torch.arange(30522)

    def fn(party):
        return mpc.share(party, ids, 0).unsqueeze(-1).eq(vocab).reveal()

    onehot = run(fn)[0]
    assert torch.equal(onehot, torch.nn.functional.one_hot(ids, 30522))


def test_mux_and_relu(run, rng):
    x, y = values(rng), values(rng).flip(0)
    c = (torch.arange(x.numel()) % 3 == 0).long()

    def fn(party):
        sx, sy, sc = mpc.share(party, x, 0), mpc.share(party, y, 1), mpc.share(party, c, 2)
        return (mpc.where(sc, sx, sy).reveal(), mpc.where(sc, sx, 2.5).reveal(), mpc.where(sc, 1.0, -1.0).reveal(),
                sx.relu().reveal())

    where_xy, where_xp, where_pp, relu = run(fn)[0]
    assert torch.equal(where_xy, torch.where(c.bool(), x, y).to(where_xy.dtype)) or \
        (where_xy - torch.where(c.bool(), x, y)).abs().max() <= 2.0**-18
    assert (where_xp - torch.where(c.bool(), x, torch.tensor(2.5, dtype=torch.float64))).abs().max() <= 2.0**-18
    assert torch.equal(where_pp, torch.where(c.bool(), 1.0, -1.0).double())
    assert (relu - x.relu()).abs().max() <= 2.0**-18


def test_mux_needs_integer_condition(run):
    def fn(party):
        s = mpc.share(party, torch.ones(2), 0)
        return mpc.where(s, s, s)

    with pytest.raises(ValueError, match="integer 0/1 condition"):
        run(fn)


@pytest.mark.parametrize("shape,dim", [((5, 7), -1), ((4, 1), 1), ((3, 8, 6), 1), ((13,), 0), ((2, 2, 9), 0)])
def test_max_and_argmax(run, rng, shape, dim):
    x = torch.randn(*shape, generator=rng, dtype=torch.float64) * 50
    if shape == (13,):
        x[3] = x[9] = x.max() + 1  # a tie: the first index wins, as in torch.argmax

    def fn(party):
        value, onehot = max_with_argmax(mpc.share(party, x, 0), dim)
        return value.reveal(), onehot.reveal(), mpc.share(party, x, 0).max(dim, keepdim=True).reveal()

    value, onehot, kept = run(fn)[0]
    fxp = mpc.FixedPoint()
    encoded = fxp.decode(fxp.encode(x))
    assert torch.equal(value, encoded.max(dim).values)
    assert torch.equal(kept, encoded.max(dim, keepdim=True).values)
    expected = torch.nn.functional.one_hot(x.argmax(dim), x.shape[dim]).movedim(-1, dim % x.ndim)
    assert torch.equal(onehot, expected)


def test_and_shares_batches_in_one_round(run, rng):
    a = torch.randint(-(2**63), 2**63 - 1, (10,), generator=rng)

    def fn(party):
        sa = a2b(mpc.share(party, a, 0))
        before = party.comm.stats.total("and").rounds
        x, y = and_shares([sa, sa], [~sa, sa])
        return x.reveal(), y.reveal(), party.comm.stats.total("and").rounds - before

    x, y, rounds = run(fn)[0]
    assert torch.equal(x, torch.zeros_like(a)) and torch.equal(y, a) and rounds == 1


def test_split_msb_and_packed_zero_test_on_full_range_words(run, rng):
    from veil.protocols.bits import all_ones
    from veil.protocols.conversions import msb

    a = torch.randint(-(2**63), 2**63 - 1, (777,), generator=rng)
    # Longest carry chains and the edges of every nibble: -1, 1, 0, the extremes, and
    # values whose nibbles are all 15 or all 0 below one set bit.
    a[:8] = torch.tensor([-1, 1, 0, -(2**63), 2**63 - 1, 2**60 - 1, 2**59, -(2**59)])
    ones = torch.full((70,), -1, dtype=torch.int64)
    ones[:64] ^= torch.tensor([1], dtype=torch.int64) << torch.arange(64)  # one zero bit each

    def fn(party):
        sa = mpc.share(party, a, 0)
        sa.frac_bits = 0
        so = a2b(mpc.share(party, ones, 2))
        return msb(sa).reveal(), all_ones(so).reveal()

    top, full = run(fn)[0]
    assert torch.equal(top, (a < 0).long())
    assert torch.equal(full, (ones == -1).long())


def test_mux_bits_on_boolean_bits_matches_where(run, rng):
    x, y = values(rng), values(rng).flip(0)
    c = torch.arange(x.numel()) % 3 == 0

    def fn(party):
        sx, sy = mpc.share(party, x, 0), mpc.share(party, y, 1)
        bits = msb(mpc.share(party, torch.where(c, -1.0, 1.0), 2))  # 1 where c
        return (mux_bits(bits, sx, sy).reveal(), mux_bits(bits, sx, 2.5).reveal(),
                mux_bits(bits, 1.0, -1.0).reveal(), mux_bits(bits[:1], sx, sy).reveal())

    xy, xp, pp, broadcast = run(fn)[0]
    fxp = mpc.FixedPoint()
    ex, ey = fxp.decode(fxp.encode(x)), fxp.decode(fxp.encode(y))
    assert torch.equal(xy, torch.where(c, ex, ey))
    assert torch.equal(xp, torch.where(c, ex, torch.tensor(2.5, dtype=torch.float64)))
    assert torch.equal(pp, torch.where(c, 1.0, -1.0).double())
    assert torch.equal(broadcast, torch.where(c[:1], ex, ey))


def test_less_than_with_the_fused_root_matches_the_plain_comparison(run, rng):
    a = torch.randint(-(2**61), 2**61, (300,), generator=rng)
    b = torch.randint(-(2**61), 2**61, (300,), generator=rng)
    b[:4] = torch.tensor([0, 1, -1, 2**60]) + a[:4]  # equal, one apart, and far apart

    def fn(party):
        x, y = mpc.share(party, a, 0), mpc.share(party, b, 1)
        x.frac_bits = y.frac_bits = 0
        return less_than(x, y, fused_root=True).reveal(), (x < y).reveal()

    fused, plain = run(fn)[0]
    assert torch.equal(fused, (a < b).long()) and torch.equal(plain, fused)
