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


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((1, 128, 30522), (30522, 768)),  # BERT's one-hot lookup: once a 64 x 1,024 x 48 corner
        ((1, 32, 50257), (50257, 768)),  # GPT-2's one-hot lookup
        ((128, 3072), (3072, 768)),
        ((1, 576), (576, 49152)),  # a decoded row by the LM head
        ((12, 128, 64), (12, 64, 128)),
    ],
)
def test_a_corner_keeps_whole_blocks_on_each_side(a_shape, b_shape):
    """Corners stay within MEASURE_MACS but keep at least CORNER_SIDE rows and columns and
    CORNER_INNER inner terms where the product has them: on thinner corners a blocked
    kernel's fixed costs hide the speed it has on the whole product (see the module)."""
    a = torch.zeros(1, dtype=torch.int64).expand(a_shape)  # views: nothing allocated
    b = torch.zeros(1, dtype=torch.int64).expand(b_shape)
    a_corner, b_corner = kc.measured_corner(a, b)
    rows, inner, columns = a_corner.shape[-2], a_corner.shape[-1], b_corner.shape[-1]
    assert kc._macs(a_corner, b_corner) <= kc.MEASURE_MACS < kc._macs(a, b)
    assert rows >= min(a_shape[-2], kc.CORNER_SIDE)
    assert columns >= min(b_shape[-1], kc.CORNER_SIDE)
    assert inner >= min(a_shape[-1], kc.CORNER_INNER)
    assert b_corner.shape[-2] == inner and a_corner.shape[:-2] == a.shape[:-2]
