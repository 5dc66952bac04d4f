"""tanh: twin vs torch over [-10, 10] (bound 1e-3), protocol vs twin (bound 1e-4)."""

import torch

from veil import mpc
from veil.protocols.approx.tanh import tanh, tanh_twin


def test_twin_is_close_to_torch_tanh():
    x = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    assert (tanh_twin(x) - torch.tanh(x)).abs().max() <= 1e-3


def test_protocol_matches_twin(run):
    x = torch.cat([torch.linspace(-10, 10, 401, dtype=torch.float64), torch.tensor([0.0, 1e-5, -1e-5, 50.0, -50.0])])

    def fn(party):
        return tanh(mpc.share(party, x, 0)).reveal()

    got = run(fn)[0]
    assert (got - tanh_twin(x)).abs().max() <= 1e-4
    assert (got - torch.tanh(x)).abs().max() <= 1e-3
