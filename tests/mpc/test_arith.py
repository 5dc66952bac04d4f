"""ArithShare against plaintext torch: linear ops, products, shapes, broadcasting."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from veil import mpc
from veil.mpc import ArithShare

ULP = 2.0**-18


def reveal_all(run, fn, *args):
    results = run(fn, *args)
    for other in results[1:]:
        assert torch.equal(results[0], other), "parties disagree on an opened value"
    return results[0]


def test_share_reveal_float_and_int(run, rng):
    x = torch.randn(4, 5, generator=rng, dtype=torch.float64) * 100
    ids = torch.tensor([0, 5, 30521, -3])

    def fn(party, owner):
        return mpc.share(party, x, owner=owner).reveal(), mpc.share(party, ids, owner=owner).reveal()

    for owner in range(3):
        results = run(fn, owner)
        for fx, fi in results:
            assert (fx - x).abs().max() <= ULP / 2
            assert torch.equal(fi, ids)


def test_share_rejects_unknown_owner_and_bad_values(run):
    with pytest.raises(ValueError, match="unknown owner party 3"):
        run(lambda p: mpc.share(p, torch.ones(2), owner=3))
    with pytest.raises(mpc.FixedPointRangeError):
        run(lambda p: mpc.share(p, torch.tensor([float("nan")]), owner=0))


def test_reveal_to_one_party_only(run):
    def fn(party):
        return mpc.reveal_to(mpc.share(party, torch.tensor([1.5, -2.0]), owner=0), 2)

    results = run(fn)
    assert results[0] is None and results[1] is None
    assert torch.allclose(results[2], torch.tensor([1.5, -2.0], dtype=torch.float64))


def test_linear_ops_with_broadcasting(run, rng):
    x = torch.randn(3, 4, 5, generator=rng, dtype=torch.float64)
    y = torch.randn(4, 1, generator=rng, dtype=torch.float64)
    c = torch.randn(5, generator=rng, dtype=torch.float64)

    def fn(party):
        sx, sy = mpc.share(party, x, 0), mpc.share(party, y, 1)
        outs = [sx + sy, sx - sy, sy - sx, -sx, sx + c, c - sx, sx + 2, 3.5 - sy, sy + c]
        return torch.stack([o.expand(3, 4, 5).reveal() for o in outs])

    expected = torch.stack([(e).expand(3, 4, 5) for e in [x + y, x - y, y - x, -x, x + c, c - x, x + 2, 3.5 - y, y + c]])
    assert (reveal_all(run, fn) - expected).abs().max() <= 3 * ULP


def test_products_public_and_secret(run, rng):
    x = torch.randn(6, 7, generator=rng, dtype=torch.float64) * 10
    y = torch.randn(6, 7, generator=rng, dtype=torch.float64) * 10
    w = torch.randn(7, 3, generator=rng, dtype=torch.float64)

    def fn(party):
        sx, sy, sw = mpc.share(party, x, 0), mpc.share(party, y, 1), mpc.share(party, w, 2)
        return [
            (sx * sy).reveal(), (sx * 0.25).reveal(), (sx * y).reveal(), (sx * 3).reveal(),
            (sx @ sw).reveal(), (sx @ w).reveal(), (x @ sw).reveal(), (sx / 4).reveal(),
        ]

    got = run(fn)[0]
    expected = [x * y, x * 0.25, x * y, x * 3, x @ w, x @ w, x @ w, x / 4]
    for g, e in zip(got, expected):
        assert (g - e).abs().max() <= 1e-3, (g - e).abs().max()


def test_integer_shares_multiply_exactly(run):
    bits = torch.tensor([0, 1, 1, 0])
    x = torch.tensor([1.5, -2.0, 3.25, 7.0], dtype=torch.float64)

    def fn(party):
        sb, sx = mpc.share(party, bits, 0), mpc.share(party, x, 1)
        product = sb * sx
        assert product.frac_bits == party.fxp.frac_bits
        return product.reveal(), (sb * sb).reveal()

    product, square = run(fn)[0]
    assert torch.equal(product, bits * x)
    assert torch.equal(square, bits)


def test_batched_secret_matmul_like_attention(run, rng):
    q = torch.randn(2, 3, 5, 4, generator=rng, dtype=torch.float64)
    k = torch.randn(2, 3, 5, 4, generator=rng, dtype=torch.float64)

    def fn(party):
        sq, sk = mpc.share(party, q, 0), mpc.share(party, k, 1)
        return (sq @ sk.transpose(-2, -1)).reveal()

    assert (run(fn)[0] - q @ k.transpose(-2, -1)).abs().max() <= 1e-4


def test_matmul_shape_mismatch_is_clear(run):
    def fn(party):
        return mpc.share(party, torch.ones(2, 3), 0) @ mpc.share(party, torch.ones(4, 2), 1)

    with pytest.raises(ValueError, match=r"matmul shape mismatch: \(2, 3\) @ \(4, 2\)"):
        run(fn)


def test_shape_api_matches_torch(run, rng):
    x = torch.randn(2, 3, 4, generator=rng, dtype=torch.float64)

    def fn(party):
        s = mpc.share(party, x, 0)
        outs = {
            "reshape": s.reshape(6, 4), "view": s.view(-1), "transpose": s.transpose(0, 2),
            "permute": s.permute(2, 0, 1), "unsqueeze": s.unsqueeze(1), "unsqueeze_neg": s.unsqueeze(-1),
            "index": s[1], "slice": s[:, 1:, ::2], "ellipsis": s[..., -1], "fancy": s[:, torch.tensor([2, 0])],
            "sum": s.sum(1), "sum_keep": s.sum(-1, keepdim=True), "sum_all": s.sum(), "mean": s.mean(2),
            "cat": mpc.cat([s, s[:1]], dim=0), "stack": mpc.stack([s, s], dim=1), "T": s[0].T,
            "expand": s[:, :1].expand(2, 5, 4), "flatten": s.flatten(1), "flip": s.flip(1),
            "squeeze": s[:, :1].squeeze(1), "repeat_interleave": s.repeat_interleave(2, dim=0),
        }
        return {k: v.reveal() for k, v in outs.items()}

    got = run(fn)[0]
    expected = {
        "reshape": x.reshape(6, 4), "view": x.view(-1), "transpose": x.transpose(0, 2),
        "permute": x.permute(2, 0, 1), "unsqueeze": x.unsqueeze(1), "unsqueeze_neg": x.unsqueeze(-1),
        "index": x[1], "slice": x[:, 1:, ::2], "ellipsis": x[..., -1], "fancy": x[:, torch.tensor([2, 0])],
        "sum": x.sum(1), "sum_keep": x.sum(-1, keepdim=True), "sum_all": x.sum(), "mean": x.mean(2),
        "cat": torch.cat([x, x[:1]], 0), "stack": torch.stack([x, x], 1), "T": x[0].T,
        "expand": x[:, :1].expand(2, 5, 4), "flatten": x.flatten(1), "flip": x.flip(1),
        "squeeze": x[:, :1].squeeze(1), "repeat_interleave": x.repeat_interleave(2, dim=0),
    }
    for name, want in expected.items():
        assert got[name].shape == want.shape, name
        # sums add up to 24 encoding roundings of half an ulp each
        assert (got[name] - want).abs().max() <= 12 * ULP, name


def test_setitem(run):
    def fn(party):
        s = mpc.share(party, torch.zeros(3, 2), 0)
        s[1] = mpc.share(party, torch.tensor([4.0, 5.0]), 1)
        return s.reveal()

    assert torch.equal(run(fn)[0], torch.tensor([[0.0, 0.0], [4.0, 5.0], [0.0, 0.0]], dtype=torch.float64))


def test_ends_of_range(run):
    """Sums and integer products are exact up to |x| < 2^44; fixed-point products need |x y| < 2^26."""
    big = torch.tensor([2.0**43 - 1, -(2.0**43), 2.0**-18, -(2.0**-18), 0.0], dtype=torch.float64)
    product_edge = torch.tensor([2.0**25, -(2.0**25), 2.0**-18, 0.0], dtype=torch.float64)

    def fn(party):
        s = mpc.share(party, big, 0)
        e = mpc.share(party, product_edge, 1)
        return (s + s).reveal(), (s * -1).reveal(), (e * 1.5).reveal(), (e * mpc.share(party, torch.tensor([1.75]), 2)).reveal()

    doubled, negated, scaled, squared = run(fn)[0]
    assert torch.equal(doubled, 2 * big)
    assert torch.equal(negated, -big)
    assert (scaled - product_edge * 1.5).abs().max() <= ULP
    assert (squared - product_edge * 1.75).abs().max() <= ULP


ring = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(ring, ring, ring), min_size=1, max_size=8))
def test_ring_identities_hold_exactly(values):
    """Over Z_2^64: (x + y) - y = x, x * (y + z) = x y + x z, sharing is additive."""
    x, y, z = (torch.tensor(col, dtype=torch.int64) for col in zip(*values))

    def fn(party):
        sx, sy, sz = (ArithShare.from_public(party, 0) + mpc.share(party, t, i) for i, t in enumerate((x, y, z)))
        return (
            ((sx + sy) - sy).reveal(),
            (sx * (sy + sz)).reveal(),
            (sx * sy + sx * sz).reveal(),
            (sx * 3 - sx - sx - sx).reveal(),
        )

    back, lhs, rhs, zero = mpc.simulate(fn)[0]
    assert torch.equal(back, x)
    assert torch.equal(lhs, rhs)
    assert torch.equal(lhs, x * (y + z))
    assert torch.equal(zero, torch.zeros_like(x))


def test_outside_owner_deals_and_client_reconstructs(run):
    x = torch.tensor([[1.25, -3.5], [0.0, 1e4]], dtype=torch.float64)
    pairs, frac = mpc.deal(x)

    def fn(party):
        s = ArithShare(party, pairs[party.rank], frac)
        return (s * 2.0 + 1).data

    out = run(fn)
    assert torch.equal(mpc.reconstruct(out, frac), 2 * x + 1)
    tampered = [out[0], out[1].clone(), out[2]]
    tampered[1][0] += 1
    with pytest.raises(ValueError, match="parties 0 and 1 disagree"):
        mpc.reconstruct(tampered, frac)
