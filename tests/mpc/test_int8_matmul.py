import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import veil.mpc.int8_matmul as im


def full_range(shape, gen):
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=gen, dtype=torch.int64)


def test_signed_limbs_recompose_and_fit_int8(rng):
    x = torch.cat([full_range((1000,), rng), torch.tensor([0, -1, 2**63 - 1, -(2**63), -im.RECODE])])
    limbs = im.signed_limbs(x)
    assert all(limb.dtype == torch.int8 for limb in limbs)
    recomposed = sum(limb.to(torch.int64) << (8 * i) for i, limb in enumerate(limbs))
    assert torch.equal(recomposed, x)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 40), st.integers(1, 70), st.integers(1, 20), st.integers(0, 2**32),
    st.sampled_from([(), (3,)]),
)
def test_int8_limbs_match_native_int64(rows, inner, cols, seed, batch):
    gen = torch.Generator().manual_seed(seed)
    a, b = full_range((*batch, rows, inner), gen), full_range((inner, cols), gen)
    assert torch.equal(im.int8_matmul(a, b), torch.matmul(a, b))


def test_broadcasting_forms_match_native(rng):
    for a_shape, b_shape in [((5,), (5, 4)), ((5,), (5,)), ((4, 5), (5,)), ((3, 4, 8), (3, 8, 2)),
                             ((2, 1, 3, 4), (5, 4, 6)), ((6,), (2, 6, 3))]:
        a, b = full_range(a_shape, rng), full_range(b_shape, rng)
        assert torch.equal(im.int8_matmul(a, b), torch.matmul(a, b)), (a_shape, b_shape)


def test_worst_case_digits_stay_exact_across_inner_chunks():
    # Every digit -128: each limb product is +2^14, the largest int32 sum the bound allows;
    # an inner chunk longer than MAX_EXACT_INNER would overflow int32 here.
    inner = 2 * im.MAX_EXACT_INNER + 5
    a = torch.full((2, inner), -im.RECODE, dtype=torch.int64)
    b = torch.full((inner, 3), -im.RECODE, dtype=torch.int64)
    assert torch.equal(im.int8_matmul(a, b), a @ b)


def test_short_chunks_are_exact(monkeypatch, rng):
    monkeypatch.setattr(im, "MAX_EXACT_INNER", 16)
    a, b = full_range((4, 50), rng), full_range((50, 3), rng)
    assert torch.equal(im.int8_matmul(a, b), a @ b)
