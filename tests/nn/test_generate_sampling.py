"""Sampled private generation on a tiny seeded GPT-2: greedy by default, the twin's distribution.

The chi-square test draws DRAWS first tokens in one request (a batch of identical prompts);
each row's uniform is drawn jointly from the parties' AES-CTR PRGs, fresh keys every run.
A correct protocol fails it with probability P_MIN = 1e-6; the MPC logits differ from the
twins' by about 1e-3, which moves the probabilities far less than the test resolves.
That test takes about 12 s (slow); tests/protocols/test_sampling.py runs the protocol's
chi-square tests in the default run.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from tests.protocols.approx_helpers import chi_square_p_value
from veil.nn.backend import ApproxBackend, ExactBackend
from veil.nn.generate import Sampling, generate
from veil.nn.gpt2 import GPT2LMHeadModel
from veil.nn.private import PrivateModel
from veil.protocols.approx.sampling import sampling_probabilities_exact, sampling_weights_twin

VOCAB = 50
DRAWS = 1000
P_MIN = 1e-6
SEED = 5  # greedy steps with a top-2 logit gap >= 0.18 (see test_mpc.py)
TEMPERATURE, TOP_K = 0.4, 6  # far enough from T = 1 for the power check (non-centrality ~220)


def _gpt2() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(SEED)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def model():
    hf = _gpt2()
    prompt = torch.randint(0, VOCAB, (1, 5))
    return hf, PrivateModel.from_hf(hf), prompt


@torch.no_grad()
def test_greedy_stays_the_default_and_do_sample_false_ignores_the_options(model):
    hf, private, prompt = model
    greedy = torch.stack(generate(GPT2LMHeadModel.from_hf(hf), ExactBackend(), prompt, 4), dim=-1)
    assert torch.equal(private.generate(prompt, 4).output, greedy)
    ignored = private.generate(prompt, 4, do_sample=False, temperature=0.3, top_k=5, top_p=0.5)
    assert torch.equal(ignored.output, greedy)


@torch.no_grad()
def test_sampling_with_top_k_1_is_greedy(model):
    """The whole sampling path (draw, top-k, exp, inverse CDF) with a single candidate."""
    hf, private, prompt = model
    greedy = torch.stack(generate(GPT2LMHeadModel.from_hf(hf), ExactBackend(), prompt, 4), dim=-1)
    assert torch.equal(private.generate(prompt, 4, do_sample=True, top_k=1).output, greedy)


@pytest.mark.slow
@torch.no_grad()
def test_sampled_first_tokens_follow_the_twin_distribution(model):
    hf, private, prompt = model
    prompts = prompt.expand(DRAWS, -1)
    result = private.generate(prompts, 1, do_sample=True, temperature=TEMPERATURE, top_k=TOP_K)
    counts = torch.bincount(result.output[:, 0], minlength=VOCAB).double()
    logits = GPT2LMHeadModel.from_hf(hf)(ApproxBackend.puma(), prompt, last_only=True)[0]
    weights = sampling_weights_twin(logits, TEMPERATURE, TOP_K)
    probs = weights / weights.sum()
    top = logits.topk(TOP_K + 1).values
    assert top[-2] - top[-1] > 0.05, "the k-th and (k+1)-th logits must be apart for this check"
    assert (counts[probs == 0] == 0).all(), "a token outside the top k was drawn"
    assert chi_square_p_value(counts, probs) > P_MIN
    # Power: the same counts do not pass as draws at temperature 1.
    plain = sampling_weights_twin(logits, 1.0, TOP_K)
    assert chi_square_p_value(counts, plain / plain.sum()) < P_MIN


def test_the_plaintext_backends_sample_their_distributions():
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.5, 0.0, 1.0]]).expand(4000, -1)
    options = (0.8, 4, 0.9)
    exact = sampling_probabilities_exact(logits[0], *options)
    weights = sampling_weights_twin(logits[0], *options)
    for ops, probs in [
        (ExactBackend(torch.Generator().manual_seed(0)), exact),
        (ApproxBackend.puma(generator=torch.Generator().manual_seed(0)), weights / weights.sum()),
    ]:
        onehot, index = ops.sample(logits, *options)
        assert torch.equal(onehot.argmax(-1), index)
        counts = torch.bincount(index, minlength=6).double()
        assert (counts[probs == 0] == 0).all()
        assert chi_square_p_value(counts, probs) > P_MIN


def test_sampling_in_plain_generation_uses_the_backend_draws(model):
    hf, _, prompt = model
    ours = GPT2LMHeadModel.from_hf(hf)
    ops = ExactBackend(torch.Generator().manual_seed(7))
    with torch.no_grad():
        tokens = generate(ours, ops, prompt.expand(8, -1), 3, sampling=Sampling(1.0, 3, None))
        ids = prompt.expand(8, -1)
        for step in tokens:
            top = ours(ExactBackend(), ids, last_only=True).topk(3).indices
            assert (top == step[:, None]).any(-1).all()
            ids = torch.cat([ids, step[:, None]], dim=1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": VOCAB + 1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.2, "do_sample": False}, "top_p"),
    ],
)
def test_bad_options_are_refused(model, options, message):
    _, private, prompt = model
    options = {"do_sample": True} | options
    with pytest.raises(ValueError, match=message):
        private.generate(prompt, 1, **options)
