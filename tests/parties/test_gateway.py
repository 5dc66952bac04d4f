"""`veil gateway` driven by the `openai` package against three serving parties.

The parties (threads of this process, mutual TLS on loopback) serve the tiny seeded
one-layer GPT-2 of :mod:`tests.parties.test_streaming`; the gateway runs as its own process,
as deployed, with a character-level tokenizer whose 64 ids match the model's vocabulary.
Greedy answers (temperature 0) must equal Hugging Face's plaintext continuation, decoded
and cut at the end-of-sequence token.
"""

from __future__ import annotations

import os
import string
import subprocess
import sys
import time

import openai
import pytest
import torch

from .test_cli import REPO, free_ports
from .test_models import tiny_gpt2
from .test_streaming import cluster

__all__ = ["cluster"]

CHARS = string.ascii_lowercase + string.digits + " .,:!?\n'-" + "ABCDEFGHIJKLMNOPQR"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'][0] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}a: {% endif %}"
)
MAX_TOKENS = 5
START_S = 180.0


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A saved character tokenizer: id 0 is the end of sequence, as in the model's config."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    assert len(vocab) == tiny_gpt2(n_layer=1).config.vocab_size
    raw = Tokenizer(models.WordLevel(vocab, unk_token="?"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<eos>", pad_token="<eos>", unk_token="?"
    )
    fast.chat_template = CHAT_TEMPLATE
    directory = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(directory)
    return directory, AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def gateway(cluster, tokenizer):
    """An OpenAI client of a running `veil gateway` process."""
    config_path = cluster[3]
    (port,) = free_ports(1)
    directory = config_path.parent
    command = [
        sys.executable, "-m", "veil.parties.cli", "gateway", "--config", str(config_path),
        "--cert", str(directory / "client.pem"), "--key", str(directory / "client.key"),
        "--model", "gpt", "--tokenizer", str(tokenizer[0]), "--port", str(port),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.5)
        yield client
    finally:
        process.terminate()
        process.wait(timeout=30)


def plaintext(tokenizer, ids: torch.Tensor) -> tuple[str, str]:
    """Hugging Face's greedy text for ``ids`` cut at EOS, and OpenAI's finish reason."""
    with torch.no_grad():
        out = tiny_gpt2(n_layer=1).generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS,
            do_sample=False, pad_token_id=0,
        )[0, ids.shape[1] :].tolist()
    if 0 in out:
        return tokenizer.decode(out[: out.index(0)]), "stop"
    return tokenizer.decode(out), "length"


def test_models_lists_what_the_gateway_serves(gateway) -> None:
    assert [model.id for model in gateway.models.list()] == ["gpt"]


def test_completion_equals_plaintext(gateway, tokenizer) -> None:
    tok = tokenizer[1]
    text, reason = plaintext(tok, tok("hi", return_tensors="pt")["input_ids"])
    answer = gateway.completions.create(model="gpt", prompt="hi", max_tokens=MAX_TOKENS,
                                        temperature=0)
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (text, reason)
    assert answer.usage.prompt_tokens == 2


def test_chat_streamed_and_whole_equal_plaintext(gateway, tokenizer) -> None:
    tok = tokenizer[1]
    messages = [{"role": "user", "content": "hi"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text, reason = plaintext(tok, tok(prompt, return_tensors="pt")["input_ids"])
    whole = gateway.chat.completions.create(
        model="gpt", messages=messages, max_tokens=MAX_TOKENS, temperature=0
    )
    assert whole.choices[0].message.content == text
    chunks = list(gateway.chat.completions.create(
        model="gpt", messages=messages, max_tokens=MAX_TOKENS, temperature=0, stream=True
    ))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == reason
    assert len(chunks) >= 2 + len(text) // 2  # pieces as they come, not one final blob


def test_stop_string_cuts_the_streamed_answer(gateway, tokenizer) -> None:
    tok = tokenizer[1]
    messages = [{"role": "user", "content": "hi"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text, _ = plaintext(tok, tok(prompt, return_tensors="pt")["input_ids"])
    assert len(set(text)) >= 3, f"the seeded model's answer {text!r} is too plain for this test"
    stop = next(c for c in text[2:] if c not in text[:2])  # cut after a non-empty part
    chunks = list(gateway.chat.completions.create(
        model="gpt", messages=messages, max_tokens=MAX_TOKENS, temperature=0, stop=stop,
        stream=True,
    ))
    cut = text[: text.index(stop)]
    assert cut and "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("option", "value"), [("n", 2), ("logprobs", 3), ("presence_penalty", 0.5)]
)
def test_unsupported_option_refused_naming_it(gateway, option, value) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.completions.create(
            model="gpt", prompt="hi", max_tokens=2, extra_body={option: value}
        )
    assert refused.value.status_code == 400
    assert refused.value.body["param"] == option, refused.value.body
    assert option in refused.value.body["message"]


class _TimedOut:
    """A stdout that notes when each piece of text was written."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        if text:
            self.writes.append((time.monotonic(), text))
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return sys.__stdout__.fileno()


def test_infer_cli_prints_tokens_as_they_come_and_stops(cluster, tokenizer, monkeypatch) -> None:
    from veil.parties.cli import main

    _, _, finished, config_path = cluster
    directory, tok = tokenizer
    text, _ = plaintext(tok, tok("hi", return_tensors="pt")["input_ids"])
    client = ["--cert", str(config_path.parent / "client.pem"),
              "--key", str(config_path.parent / "client.key")]
    command = ["infer", "--config", str(config_path), *client, "--model", "gpt",
               "--task", "generate", "--tokenizer", str(directory), "--text", "hi",
               "--max-new-tokens", str(MAX_TOKENS)]
    out = _TimedOut()
    monkeypatch.setattr(sys, "stdout", out)
    before = set(finished)
    assert main(command) == 0
    ended = min(t for r in set(finished) - before for t in finished[r])
    printed = "".join(piece for _, piece in out.writes)
    assert printed.startswith(text + "\n")
    first_piece = next(t for t, piece in out.writes if piece.strip())
    assert first_piece < ended, "the text was printed only after the parties finished"

    out.writes.clear()
    assert main([*command, "--stop", text[2]]) == 0
    printed = "".join(piece for _, piece in out.writes)
    assert printed.startswith(text[: text.index(text[2])] + "\n"), printed
