import pytest
import torch

from veil import mpc
from veil.mpc.prg import AesPrg, new_key


def test_same_key_same_stream_and_counter_advances():
    key = new_key()
    a, b = AesPrg(key), AesPrg(key)
    first = a.random_int64((1000,))
    assert torch.equal(first, b.random_int64((1000,)))
    assert not torch.equal(first, a.random_int64((1000,)))


def test_different_keys_differ_and_bits_look_uniform():
    x = AesPrg(new_key()).random_int64((100_000,))
    y = AesPrg(new_key()).random_int64((100_000,))
    assert not torch.equal(x, y)
    bits = torch.stack([(x >> k) & 1 for k in range(64)]).double().mean(dim=1)
    assert ((bits - 0.5).abs() < 0.01).all()


def test_bad_key_length():
    with pytest.raises(ValueError, match="16 bytes"):
        AesPrg(b"short")


def test_zero_sharings_sum_to_zero(run):
    def fn(party):
        return party.zero_share((50,)), party.xor_zero_share((50,))

    results = run(fn)
    assert torch.equal(sum(r[0] for r in results), torch.zeros(50, dtype=torch.int64))
    assert torch.equal(results[0][1] ^ results[1][1] ^ results[2][1], torch.zeros(50, dtype=torch.int64))
    assert not torch.equal(results[0][0], torch.zeros(50, dtype=torch.int64))


def test_pairwise_keys_are_fresh_per_session(run):
    def fn(party):
        return party.random_next((4,))

    assert not torch.equal(run(fn)[0], run(fn)[0])


def test_protocol_randomness_ignores_torch_seed(run):
    def fn(party):
        torch.manual_seed(0)
        return mpc.share(party, torch.ones(8), owner=0).data

    assert not torch.equal(run(fn)[1], run(fn)[1])
