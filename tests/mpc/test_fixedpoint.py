import math

import pytest
import torch

from veil.mpc.fixedpoint import FixedPoint, FixedPointRangeError


def test_round_trip_within_half_ulp():
    fxp = FixedPoint(18)
    values = torch.tensor([0.0, 1.0, -1.0, 3.14159, -2.5e-6, 1e6, -1.7e13], dtype=torch.float64)
    decoded = fxp.decode(fxp.encode(values))
    assert (decoded - values).abs().max().item() <= 0.5 / fxp.scale


def test_configurable_fractional_bits():
    assert FixedPoint(12).encode(1.0).item() == 4096
    assert FixedPoint(24).encode(-0.5).item() == -(1 << 23)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_rejected(bad):
    with pytest.raises(FixedPointRangeError, match="NaN or infinity"):
        FixedPoint().encode(torch.tensor([1.0, bad]))


def test_out_of_range_rejected_with_the_range_named():
    fxp = FixedPoint(18)
    assert fxp.max_abs == 2.0**44
    fxp.encode(torch.tensor([math.nextafter(2.0**44, 0)], dtype=torch.float64))
    with pytest.raises(FixedPointRangeError, match=r"outside the fixed-point range \|x\| < 2\^44"):
        fxp.encode(torch.tensor([2.0**44]))


def test_bad_frac_bits():
    with pytest.raises(ValueError):
        FixedPoint(0)
