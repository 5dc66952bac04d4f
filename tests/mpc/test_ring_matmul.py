import torch

import veil.mpc.ring_matmul as rm
from veil.mpc.kernel_choice import shape_class


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


def test_wide_limb_path_is_bit_exact_against_native(rng):
    shapes = [((7, 5), (5, 3)), ((2, 16, 33), (33, 9)), ((3, 4, 8), (3, 8, 2)), ((5,), (5, 4)),
              ((2, 3, 7), (7,)), ((4, 6), (2, 6, 5))]
    for a_shape, b_shape in shapes:
        a, b = full_range(a_shape, rng), full_range(b_shape, rng)
        assert torch.equal(rm.wide_limb_matmul(a, b), torch.matmul(a, b)), (a_shape, b_shape)


def test_wide_limb_path_at_the_ring_extremes_and_in_blocks(monkeypatch, rng):
    # Largest limbs everywhere: each limb GEMM's sum is at its 2^53 bound at full inner length.
    inner = rm.WIDE_MAX_INNER
    for value in (-(2**63), 2**63 - 1, -1, (1 << 44) - 1):
        a = torch.full((3, inner), value, dtype=torch.int64)
        b = torch.full((inner, 2), value, dtype=torch.int64)
        assert torch.equal(rm.wide_limb_matmul(a, b), a @ b), value
    monkeypatch.setattr(rm, "WIDE_MAX_INNER", 16)
    monkeypatch.setattr(rm, "WIDE_COLUMNS", 4)
    a, b = full_range((2, 5, 50), rng), full_range((50, 11), rng)
    assert torch.equal(rm.wide_limb_matmul(a, b), a @ b)
    assert torch.equal(rm.wide_limb_matmul(a, b.mT.contiguous().mT), a @ b)


def test_cpu_choice_is_exact_and_measured_once_per_class(rng):
    a, b = full_range((9, 70), rng), full_range((70, 33), rng)
    assert torch.equal(rm.ring_matmul(a, b), a @ b)
    choice = rm.CPU_CHOOSER.choices[shape_class(a, b)]
    assert choice.name in rm.CPU_CHOOSER.kernels
    assert set(choice.seconds) == set(rm.CPU_CHOOSER.kernels)  # both were timed


def test_skinny_and_transposed_cpu_paths_are_exact(rng):
    b = full_range((40, 24), rng)
    for a_shape in [(40,), (1, 40), (2, 40), (1, 1, 40), (3, 40)]:
        a = full_range(a_shape, rng)
        assert torch.equal(rm.ring_matmul(a, b), torch.matmul(a, b)), a_shape
        assert torch.equal(rm.ring_matmul(a, b.mT.contiguous().mT), torch.matmul(a, b)), a_shape
