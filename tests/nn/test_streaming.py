"""Streaming generation in the in-process simulation, the parties' stop agreement, and the
client's text cutting (EOS, stop strings, partial characters)."""

from __future__ import annotations

import time

import pytest
import torch
import transformers

from veil import mpc
from veil.nn.private import PrivateModel
from veil.nn.stopping import any_party
from veil.nn.text_stream import TextStream

IDS = torch.tensor([[1, 5, 9, 20], [2, 4, 6, 8]])
STEPS = 5


@pytest.fixture(scope="module")
def private() -> PrivateModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=32, initializer_range=0.1,
        bos_token_id=0, eos_token_id=0,
    )
    return PrivateModel.from_hf(transformers.GPT2LMHeadModel(config).eval())


@pytest.mark.parametrize("flags", [(False, False, False), (False, True, False), (True, True, True)])
def test_any_party_is_the_same_or_everywhere(flags) -> None:
    results = mpc.simulate(lambda party: any_party(party, flags[party.rank]))
    assert results == [any(flags)] * 3


def test_stream_equals_generate_step_by_step(private) -> None:
    whole = private.generate(IDS, STEPS).output.long()
    arrived, steps = [], []
    start = time.perf_counter()
    for step in private.generate_stream(IDS, STEPS):
        arrived.append(time.perf_counter())
        steps.append(step)
    assert torch.equal(torch.stack(steps, dim=-1), whole)
    spread = (arrived[-1] - arrived[0]) / (arrived[-1] - start)
    assert spread > 0.3, f"the tokens came in a burst at the end ({arrived})"


def test_stop_at_eos_ends_the_stream_there(private) -> None:
    row = private.generate(IDS[:1], STEPS).output.long()[0].tolist()
    eos = row[1]  # as if the second token ended the sequence
    steps = [s.item() for s in private.generate_stream(IDS[:1], STEPS, stop_at_eos=eos)]
    assert steps == row[: row.index(eos) + 1] and len(steps) < STEPS


def test_closing_a_stoppable_stream_stops_the_parties(private) -> None:
    stream = private.generate_stream(IDS, 20, stoppable=True)
    first = next(stream)
    stream.close()
    assert torch.equal(first, private.generate(IDS, 1).output.long()[:, 0])  # serves again


class _Pieces:
    """A tokenizer whose ids decode to fixed strings ("\\ufffd" for half a character)."""

    eos_token_id = 0

    def __init__(self, pieces: list[str]):
        self.pieces = pieces

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.pieces[i] for i in ids)
        return text.replace("\ufffd\ufffd", "é")  # two halves make one character


PIECES = ["<eos>", "a", "E", "N", "D", "x", "\ufffd"]


def _feed(stream: TextStream, ids: list[int]) -> list[str]:
    return [stream.push(i) for i in ids]


def test_text_holds_back_what_may_start_a_stop_string() -> None:
    stream = TextStream(_Pieces(PIECES), stop=["END"])
    assert _feed(stream, [1, 2, 3, 4, 1]) == ["a", "", "", "", ""]
    assert (stream.text, stream.finish_reason) == ("a", "stop")
    stream = TextStream(_Pieces(PIECES), stop=["END"])
    assert _feed(stream, [1, 2, 5]) == ["a", "", "Ex"]
    assert not stream.done


def test_text_holds_back_half_a_character_and_cuts_at_eos_only_if_asked() -> None:
    stream = TextStream(_Pieces(PIECES), stop_at_eos=True)
    assert _feed(stream, [1, 6, 6, 0, 1]) == ["a", "", "é", "", ""]
    assert stream.finish_reason == "stop"
    stream = TextStream(_Pieces(PIECES))
    assert _feed(stream, [1, 0, 5]) == ["a", "<eos>", "x"]
    assert stream.flush() == "" and not stream.done
