"""Secure sampling: exact one-hots, the twin's distribution, top-k/top-p respected, cost, views.

Chi-square tests: DRAWS rows of one logit vector are sampled in ONE batched call, so each row
gets its own jointly drawn u.  The draws come from the parties' AES-CTR PRGs, whose keys are
fresh per session (OS CSPRNG), so runs differ; a correct protocol fails a test only with
probability P_MIN = 1e-6 (the p-value threshold) per check.  The discretisation of u (2^-f)
and exp's error (about 2e-4 per weight, the same in protocol and twin) shift each probability
by far less than the test resolves at DRAWS = 3000 (a standard error of about 0.009).
"""

import math

import pytest
import torch
import transformers

from tests.mpc.test_privacy import RecordingNetwork, bit_frequencies
from tests.protocols.approx_helpers import chi_square_p_value
from veil import mpc
from veil.protocols.approx.sampling import (
    check_sampling,
    random_unit,
    sample,
    sample_twin,
    sampling_probabilities_exact,
    sampling_weights_twin,
)

DRAWS = 3000
P_MIN = 1e-6
EXP_CLIPPED = math.exp(-14)
"""A probability below this may be 0 in the twin: exp clips its input below -14."""
LOGITS = torch.tensor([1.2, -0.4, 2.0, 0.3, 1.9, -1.5, 0.8, 0.0])


def sampled_onehots(logits: torch.Tensor, **options) -> torch.Tensor:
    """One-hots of sample() at 3 parties, revealed only here, in the test."""

    def fn(party):
        x = mpc.share(party, logits, 0)
        return sample(x, **options).reveal()

    return mpc.simulate(fn)[0]


def assert_one_hot(onehots: torch.Tensor) -> None:
    assert ((onehots == 0) | (onehots == 1)).all()
    assert (onehots.sum(-1) == 1).all()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"temperature": 0.6},
        {"top_k": 3},
        {"top_p": 0.8},
        {"temperature": 1.5, "top_k": 5, "top_p": 0.9},
    ],
    ids=["T=1", "T=0.6", "top_k=3", "top_p=0.8", "all"],
)
def test_draws_follow_the_twin_distribution(options):
    onehots = sampled_onehots(LOGITS.expand(DRAWS, -1), **options)
    assert_one_hot(onehots)
    counts = onehots.sum(0).double()
    weights = sampling_weights_twin(LOGITS, **options)
    probs = weights / weights.sum()
    assert (counts[probs == 0] == 0).all(), "a token outside top-k / the nucleus was drawn"
    assert chi_square_p_value(counts, probs) > P_MIN
    # The test has power: the same counts are rejected against the untempered distribution.
    plain = sampling_weights_twin(LOGITS)
    if options:
        assert chi_square_p_value(counts, plain / plain.sum()) < P_MIN


def test_top_k_and_top_p_keep_the_right_tokens():
    order = LOGITS.argsort(descending=True)
    assert set(sampling_weights_twin(LOGITS, top_k=3).nonzero().flatten().tolist()) == set(
        order[:3].tolist()
    )
    probs = LOGITS.double().softmax(-1)[order]
    # The nucleus: the fewest top tokens whose mass reaches p.
    for p in (0.3, 0.5, 0.8, 0.95):
        size = int((probs.cumsum(0) < p).sum()) + 1
        kept = sampling_weights_twin(LOGITS, top_p=p).nonzero().flatten().tolist()
        assert set(kept) == set(order[:size].tolist()), p


def test_twin_probabilities_match_transformers_warpers():
    logits = torch.randn(4, 40, generator=torch.Generator().manual_seed(3)) * 3
    for temperature, top_k, top_p in [(1.0, None, None), (0.7, 10, None), (1.3, None, 0.7), (0.9, 12, 0.85)]:
        warped = transformers.TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k is not None:
            warped = transformers.TopKLogitsWarper(top_k)(None, warped)
        if top_p is not None:
            warped = transformers.TopPLogitsWarper(top_p)(None, warped)
        reference = warped.double().softmax(-1)
        exact = sampling_probabilities_exact(logits, temperature, top_k, top_p)
        assert torch.allclose(exact, reference, atol=1e-7)
        weights = sampling_weights_twin(logits, temperature, top_k, top_p)
        twin = weights / weights.sum(-1, keepdim=True)
        assert (twin[reference == 0] == 0).all()
        assert (reference[twin == 0] < EXP_CLIPPED).all()
        assert (twin - reference).abs().max() < 2e-3


def test_tiny_temperature_is_greedy(rng):
    # Logits 0.05 apart at least: at T = 1e-3 every runner-up is 50 below the max (clipped).
    logits = torch.stack([torch.randperm(16, generator=rng) * 0.05 for _ in range(64)]) - 0.4
    onehots = sampled_onehots(logits, temperature=1e-3)
    assert torch.equal(onehots.argmax(-1), logits.argmax(-1))
    assert_one_hot(onehots)


def test_twin_draw_is_the_inverse_cdf():
    weights = sampling_weights_twin(LOGITS)
    cumulative = (weights / weights.sum()).cumsum(0)
    u = torch.linspace(0, 1 - 2**-18, 1001, dtype=torch.float64)
    chosen = sample_twin(LOGITS.expand(len(u), -1), u).argmax(-1)
    assert torch.equal(chosen, torch.searchsorted(cumulative, u, right=True))


def test_random_unit_is_uniform_and_no_party_knows_it():
    n = 20_000
    network = RecordingNetwork()

    def fn(party):
        u = random_unit(party, (n,))
        own = u.data  # this party's two components: all it holds of u
        received = list(network.received[party.rank])
        return u.reveal(), own, received

    results = mpc.simulate(fn, network=network)
    u = results[0][0]
    assert ((u >= 0) & (u < 1)).all()
    assert torch.equal(u * 2**18, (u * 2**18).round())
    assert abs(u.mean() - 0.5) < 5 * (1 / 12 / n) ** 0.5
    for _, own, received in results:
        # The party's best local guess (its two components' sum) carries no information.
        guess = mpc.FixedPoint().decode(own[0] + own[1], 18) % 1
        assert abs(torch.corrcoef(torch.stack([guess, u]))[0, 1]) < 0.05
        for message in (m for m in received if m.numel() >= n):  # not the key exchange
            assert ((bit_frequencies(message) - 0.5).abs() < 0.02).all()


def test_the_chosen_token_never_travels_in_the_clear():
    network = RecordingNetwork()
    logits = LOGITS.expand(256, -1)

    def fn(party):
        x = mpc.share(party, logits, 0)
        start = len(network.received[party.rank])
        onehot = sample(x, top_k=4)
        return onehot.data, network.received[party.rank][start:]

    results = mpc.simulate(fn, network=network)
    onehots = results[0][0][0] + results[1][0][0] + results[2][0][0]
    assert_one_hot(onehots)
    for own, messages in results:
        # Neither held component, nor their sum, is the one-hot.
        for component in (own[0], own[1], own[0] + own[1]):
            assert not ((component == 0) | (component == 1)).all()
        for message in messages:
            if message.numel() >= onehots.numel():
                assert not torch.equal(message.reshape(-1)[: onehots.numel()], onehots.reshape(-1))
                freq = bit_frequencies(message)
                assert ((freq - 0.5).abs() < 0.1).all()


# Cost at V = 4096 (a multiple of 64: no partly filled bit-sliced blocks), one row.
V = 4096
L = math.ceil(math.log2(V))
F = 18
ROW_BYTES = 32 * F // 3 + 8  # the draw and u S
M = 5048 / 64 / 3  # bytes per element of an MSB (protocols/carry.py)
S = 64 / 3  # of a multiplexer on a boolean bit (protocols/select.py)
C = M + 32 / 3  # of a comparison with its B2A


@pytest.mark.parametrize(
    ("options", "depth_bound", "bytes_per_element"),
    [
        ({}, 6 * L + 21, 2 * (M + S) + 128 + C),
        ({"temperature": 0.5}, 6 * L + 23, 2 * (M + S) + 144 + C),
        ({"top_k": 3}, 6 * L + 21 + 2 * 7 * L + 6, 2 * (M + S) + 128 + C + (M + 2 * S) * 2 + C),
        ({"top_p": 0.7}, 6 * L + 21 + 13 * (F + 1) + 7, 2 * (M + S) + 128 + C + (C + 8) * (F + 2)),
    ],
    ids=["T=1", "T=0.5", "top_k=3", "top_p=0.7"],
)
def test_cost_per_token_matches_the_docstring(run, options, depth_bound, bytes_per_element):
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(0)) * 3

    def fn(party):
        x = mpc.share(party, logits, 0)
        x.reveal()  # every party's clock in step before the measured part
        with party.comm.scope("measured"):
            sample(x, **options)
        traffic = party.comm.stats.total("measured")
        return traffic.depth, traffic.bytes_sent

    results = run(fn)
    depth = max(d for d, _ in results)
    assert depth_bound - 3 <= depth <= depth_bound
    expected = bytes_per_element * V + ROW_BYTES
    for _, sent in results:
        # The max trees' last levels and the per-row comparisons fill partial words (their
        # thirds round up): under 8% at this size; the thirds differ between the parties.
        assert expected <= sent <= 1.08 * expected


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "message"),
    [
        (0.0, None, None, "temperature"),
        (-1.0, None, None, "temperature"),
        (1.0, 0, None, "top_k"),
        (1.0, 9, None, "top_k"),
        (1.0, 2.5, None, "top_k"),
        (1.0, None, 0.0, "top_p"),
        (1.0, None, 1.5, "top_p"),
    ],
)
def test_bad_options_are_refused(temperature, top_k, top_p, message):
    with pytest.raises(ValueError, match=message):
        check_sampling(8, temperature, top_k, top_p)
