"""Cross products across the split of a share (protocols/cross.py): exact, one round, the
documented bytes, and no message to the dealer of a part."""

import pytest
import torch

from veil import mpc
from veil.protocols.conversions import a2b
from veil.protocols.cross import DEALER, cross_products, dealer_and_neighbour, xor_split

N = 100  # thirds of 33, 33 and 34 elements


def product_by_cross_terms(party, x, z, boolean):
    """x * z (or x & z) as sum alpha beta + gamma: (X_D + X_N)(Z_D + Z_N) with
    alphas (X_D Z_D, X_D, Z_D), betas (1, Z_N, X_N), gamma X_N Z_N."""
    split = xor_split if boolean else dealer_and_neighbour
    mul = (lambda a, b: a & b) if boolean else (lambda a, b: a * b)

    def alphas(part):
        xd, zd = split(x[:, part], DEALER), split(z[:, part], DEALER)
        return torch.stack((mul(xd, zd), xd, zd))

    def betas(part, role):
        xn, zn = split(x[:, part], role), split(z[:, part], role)
        one = torch.full_like(xn, -1 if boolean else 1)
        return torch.stack((one, zn, xn)).unsqueeze(0), mul(xn, zn).unsqueeze(0)

    parts = cross_products(party, x.shape[1], lambda part: part.stop - part.start, 3, 1, alphas, betas, boolean)
    return torch.cat([out[:, 0] for _, out in parts], dim=1)


@pytest.mark.parametrize("boolean", [False, True])
def test_cross_products_give_the_product_in_one_round_with_documented_bytes(run, rng, boolean):
    x = torch.randint(-(2**63), 2**63 - 1, (N,), generator=rng)
    z = torch.randint(-(2**63), 2**63 - 1, (N,), generator=rng)

    def fn(party):
        sx, sz = mpc.share(party, x, 0), mpc.share(party, z, 1)
        if boolean:
            sx, sz = a2b(sx), a2b(sz)
        sx.reveal()  # level clocks
        before, clock = party.comm.stats.total(), party.comm.clock
        data = product_by_cross_terms(party, sx.data, sz.data, boolean)
        after, clocks = party.comm.stats.total(), (clock, party.comm.clock)
        opened = (mpc.BoolShare(party, data) if boolean else mpc.ArithShare(party, data, 0)).reveal()
        received = after.bytes_received - before.bytes_received
        return opened, clocks, after.bytes_sent - before.bytes_sent, received

    results = run(fn)
    expected = x & z if boolean else x * z
    sizes = [33, 33, 34]  # part j is dealt by party j
    assert max(c[1] for _, c, _, _ in results) - max(c[0] for _, c, _, _ in results) == 1
    for rank, (opened, _, sent, received) in enumerate(results):
        assert torch.equal(opened, expected)
        # Dealer: 2 x 3 alphas per element; each neighbour: one correction per element.
        assert sent == 8 * (6 * sizes[rank] + sizes[(rank - 1) % 3] + sizes[(rank + 1) % 3])
        # Nothing comes to the dealer of a part: a party receives only on the two others.
        assert received == 8 * sum(4 * sizes[j] for j in range(3) if j != rank)
