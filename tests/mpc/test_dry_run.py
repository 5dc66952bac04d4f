"""Dry-run parties (cost estimates): no keystream, no matmul arithmetic, only in their threads."""

from __future__ import annotations

import torch

from veil import mpc
from veil.mpc import dry_run
from veil.mpc.ring_matmul import ring_matmul


def test_a_dry_party_draws_nothing_and_its_matmuls_only_allocate():
    a = torch.randint(-(2**62), 2**62, (3, 5), dtype=torch.int64)
    b = torch.randint(-(2**62), 2**62, (5, 4), dtype=torch.int64)

    def program(party: mpc.Party):
        before = party.random_next((4,))
        dry_run.start(party)
        return before, party.prg_next, ring_matmul(a, b).shape, dry_run.active()

    for before, prg, shape, active in mpc.simulate(program):
        assert before.shape == (4,)
        assert isinstance(prg, dry_run.NullPrg)
        assert prg.random_int64((2, 3)).shape == (2, 3)
        assert shape == (3, 4) and active

    # The simulated parties were threads of their own: this thread still computes.
    assert not dry_run.active()
    assert torch.equal(ring_matmul(a, b), a @ b)
