import time

import pytest
import torch

import veil.mpc.ring_matmul as rm
from veil.mpc import kernel_choice as kc
from veil.mpc.kernel_choice import KernelChooser, shape_class


def full_range(shape, gen):
    return torch.randint(-(2**63), 2**63 - 1, shape, generator=gen, dtype=torch.int64)


class Counted:
    def __init__(self, delay_s: float = 0.0, fails: bool = False):
        self.calls = 0
        self.delay_s = delay_s
        self.fails = fails

    def __call__(self, a, b):
        self.calls += 1
        if self.fails:
            raise RuntimeError("this device has no such kernel")
        time.sleep(self.delay_s)
        return torch.matmul(a, b)


@pytest.mark.parametrize("slow_first", [True, False])
def test_faster_kernel_is_kept_and_measured_once_per_class(rng, slow_first):
    slow, fast = Counted(0.02), Counted()
    kernels = {"slow": slow, "fast": fast} if slow_first else {"fast": fast, "slow": slow}
    chooser = KernelChooser(kernels)
    a, b = full_range((5, 7), rng), full_range((7, 3), rng)
    assert torch.equal(chooser(a, b), a @ b)
    assert (slow.calls, fast.calls) == (3, 3)  # a warm-up and two timed runs each
    assert torch.equal(chooser(full_range((6, 8), rng), b.new_zeros(8, 4)), torch.zeros(6, 4, dtype=torch.int64))
    assert (slow.calls, fast.calls) == (3, 4)  # same class: no new measurement
    [choice] = chooser.choices.values()
    assert choice.name == "fast" and choice.seconds["slow"] > choice.seconds["fast"]


def test_failing_kernel_is_dropped_and_reported(rng):
    chooser = KernelChooser({"broken": Counted(fails=True), "works": Counted()})
    a, b = full_range((3, 4), rng), full_range((4, 2), rng)
    assert torch.equal(chooser(a, b), a @ b)
    [choice] = chooser.choices.values()
    assert choice.name == "works" and "no such kernel" in choice.failures["broken"]


def test_no_working_kernel_raises(rng):
    chooser = KernelChooser({"broken": Counted(fails=True)})
    with pytest.raises(RuntimeError, match="no ring GEMM kernel"):
        chooser(full_range((3, 4), rng), full_range((4, 2), rng))


def test_shape_classes_separate_batched_and_sizes(rng):
    a = full_range((2, 3, 4), rng)
    assert shape_class(a, full_range((4, 5), rng)) == shape_class(a, full_range((4, 7), rng))
    assert shape_class(a, full_range((4, 5), rng)) != shape_class(a, full_range((4, 9), rng))
    assert shape_class(a, full_range((4, 5), rng)) != shape_class(a, full_range((2, 4, 5), rng))


def test_the_cuda_candidates_agree_with_native(rng):
    a, b = full_range((2, 17, 40), rng), full_range((40, 24), rng)
    for name, kernel in rm.CUDA_CHOOSER.kernels.items():
        assert torch.equal(kernel(a, b), a @ b), name


def test_chooser_on_cpu_tensors_is_exact(rng):
    """The CUDA dispatch run on CPU tensors: measurement, choice and result."""
    chooser = KernelChooser(dict(rm.CUDA_CHOOSER.kernels))
    a, b = full_range((3, 16, 33), rng), full_range((33, 9), rng)
    assert torch.equal(chooser(a, b), a @ b)
    assert torch.equal(chooser(a, b), a @ b)
    [choice] = chooser.choices.values()
    assert set(choice.seconds) == set(rm.CUDA_CHOOSER.kernels)


def test_large_products_are_timed_on_a_corner(monkeypatch, rng):
    """Above MEASURE_MACS the candidates run on a corner of the operands (a warm-up and two
    timed runs); the kept one then computes the whole product (one more call)."""
    monkeypatch.setattr(kc, "MEASURE_MACS", 64)
    slow, fast = Counted(0.02), Counted()
    seen = []

    def recording(a, b):
        seen.append((tuple(a.shape), tuple(b.shape)))
        return fast(a, b)

    chooser = KernelChooser({"slow": slow, "fast": recording})
    a, b = full_range((2, 9, 16), rng), full_range((16, 5), rng)
    assert torch.equal(chooser(a, b), a @ b)
    (a_corner, b_corner), whole = seen[0], seen[-1]
    assert whole == ((2, 9, 16), (16, 5)) and len(seen) == 4
    assert 2 * a_corner[-2] * a_corner[-1] * b_corner[-1] <= 64
    assert a_corner[-1] == b_corner[-2] and a_corner[0] == 2
    assert chooser.choices[shape_class(a, b)].name == "fast"
