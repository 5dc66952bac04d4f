"""What a single party sees: uniformly random words, independent of the secret."""

import torch

from veil import mpc
from veil.mpc.inmemory import InMemoryNetwork
from veil.protocols.conversions import a2b

N = 20_000
SECRET = 12345.678


class RecordingQueue:
    def __init__(self, inner, log):
        self.inner, self.log = inner, log

    def put(self, item):
        if isinstance(item, tuple):  # (tensor, logical clock): the clock follows public structure
            self.log.append(item[0].clone())
        self.inner.put(item)

    def get(self, timeout=None):
        return self.inner.get(timeout=timeout)


class RecordingNetwork(InMemoryNetwork):
    """Keeps a copy of every tensor each party receives."""

    def __init__(self):
        super().__init__()
        self.received = {rank: [] for rank in range(3)}
        self.queues = {key: RecordingQueue(q, self.received[key[1]]) for key, q in self.queues.items()}


def bit_frequencies(words: torch.Tensor) -> torch.Tensor:
    words = words.reshape(-1)
    return torch.stack([((words >> k) & 1).double().mean() for k in range(64)])


def test_a_partys_shares_of_zero_and_of_a_secret_look_alike():
    """Party 1's two components for sharings of 0 and of SECRET: same (uniform) bit statistics."""

    def fn(party):
        zero = mpc.share(party, torch.zeros(N), owner=0)
        secret = mpc.share(party, torch.full((N,), SECRET), owner=0)
        return zero.data, secret.data

    view_zero, view_secret = mpc.simulate(fn)[1]
    for comp in range(2):
        f0, f1 = bit_frequencies(view_zero[comp]), bit_frequencies(view_secret[comp])
        # 4.5 sigma for a fair bit over N samples
        bound = 4.5 * (0.25 / N) ** 0.5
        assert ((f0 - 0.5).abs() < bound).all()
        assert ((f1 - 0.5).abs() < bound).all()
        encoded = mpc.FixedPoint().encode(SECRET)
        assert not (view_secret[comp] == encoded).any()


def test_protocol_messages_and_state_never_hold_the_secret():
    network = RecordingNetwork()
    encoded = int(mpc.FixedPoint().encode(SECRET))

    def fn(party):
        x = mpc.share(party, torch.full((N,), SECRET), owner=0)
        after_share = len(network.received[party.rank])
        y = mpc.share(party, torch.full((N,), 0.5), owner=1)
        outputs = [x * y, x < y, x.eq(y), x.relu(), a2b(x).data, (x * 0.25)]
        states = [o.data if hasattr(o, "data") else o for o in outputs]
        return after_share, states

    results = mpc.simulate(fn, network=network)
    for rank in range(3):
        after_share, states = results[rank]
        protocol_traffic = [t for t in network.received[rank][after_share:] if t.numel() >= N]
        assert protocol_traffic, "expected protocol messages"
        for message in protocol_traffic:
            assert not (message == encoded).any()
            # every message is masked: its words have uniform bits
            freq = bit_frequencies(message)
            assert ((freq - 0.5).abs() < 0.05).all(), (rank, freq)
        for state in states:
            assert not (state == encoded).any()
            assert not (state == encoded // 4).any()


def test_norm_softmax_and_argmax_messages_look_uniform():
    """The candidate norms and reciprocals (every bracket's guess beside the bracket, then a
    select), the planned tournaments with packed ANDs, attention's reshared scores and the
    narrow A2B: every large message
    a party receives has uniform bits, and none holds the secret rows' encodings."""
    from veil.protocols.approx.argmax import argmax
    from veil.protocols.approx.embedding import embedding
    from veil.protocols.approx.layernorm import layernorm
    from veil.protocols.approx.softmax import attention, softmax

    network = RecordingNetwork()
    # 4096 rows, so that even the rounds of one element per row (the selects) are large
    # enough for bit statistics.  (Uniform bits cannot show a missing zero-sharing before a
    # reshare: a 3-out-of-3 component alone already looks uniform.)
    rows = torch.full((4096, 8), SECRET / 1000) + torch.arange(8, dtype=torch.float64) * 1e-3
    table = torch.randn(64, 8, dtype=torch.float64)
    encoded = mpc.FixedPoint().encode(rows)

    def fn(party):
        x = mpc.share(party, rows, owner=0)
        ids = mpc.share(party, torch.arange(4096) % 64, owner=0)
        table_share = mpc.share(party, table, owner=1)
        start = len(network.received[party.rank])
        layernorm(x, None, None)
        softmax(x)
        # 2048 heads of one query and 2 keys: the scores' product reshared with 2f bits.
        keys = x.reshape(1, 2048, 2, 8)
        attention(keys[:, :, :1], keys, keys)
        argmax(x)
        embedding(ids, table_share)
        return start

    results = mpc.simulate(fn, network=network)
    for rank in range(3):
        messages = [t for t in network.received[rank][results[rank]:] if t.numel() >= 4096]
        assert len(messages) >= 10
        for message in messages:
            freq = bit_frequencies(message)
            assert ((freq - 0.5).abs() < 0.05).all(), (rank, message.numel(), freq)
            assert not torch.isin(message.reshape(-1), encoded.reshape(-1)[:512]).any()
