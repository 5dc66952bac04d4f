import torch

import veil.mpc.ring_matmul as rm


def full_range(shape, gen):
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=gen, dtype=torch.int64)


def test_limb_path_is_bit_exact_against_native(rng):
    for a_shape, b_shape in [((7, 5), (5, 3)), ((2, 16, 33), (33, 9)), ((3, 4, 8), (3, 8, 2)), ((5,), (5, 4))]:
        a, b = full_range(a_shape, rng), full_range(b_shape, rng)
        assert torch.equal(rm.limb_matmul(a, b), torch.matmul(a, b))


def test_limb_path_chunks_long_inner_dimension(monkeypatch, rng):
    monkeypatch.setattr(rm, "MAX_EXACT_INNER", 16)
    a, b = full_range((4, 50), rng), full_range((50, 3), rng)
    assert torch.equal(rm.limb_matmul(a, b), a @ b)


def test_native_used_on_cpu(rng):
    a, b = full_range((3, 3), rng), full_range((3, 3), rng)
    assert torch.equal(rm.ring_matmul(a, b), a @ b)


def test_skinny_and_transposed_cpu_paths_are_exact(rng):
    b = full_range((40, 24), rng)
    for a_shape in [(40,), (1, 40), (2, 40), (1, 1, 40), (3, 40)]:
        a = full_range(a_shape, rng)
        assert torch.equal(rm.ring_matmul(a, b), torch.matmul(a, b)), a_shape
        assert torch.equal(rm.ring_matmul(a, b.mT.contiguous().mT), torch.matmul(a, b)), a_shape
