"""``veil demo`` in plaintext: our models print the same results as Hugging Face."""

from __future__ import annotations

import pytest

from nn import demo


def test_minilm_demo_matches_hf(minilm, monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_minilm", lambda: minilm)
    assert demo.main(["--model", "minilm", "--text", "A cat sat.", "--text", "A dog ran."]) == 0
    out = capsys.readouterr()
    hf, ours = out.out.split("veil (exact)")
    assert hf.splitlines()[1:] == ours.splitlines()[1:2]
    assert "minilm layers" in out.err


def test_minilm_demo_on_secret_shares(minilm, monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_minilm", lambda: minilm)
    args = [
        "--model",
        "minilm",
        "--backend",
        "mpc",
        "--text",
        "A cat sat.",
        "--text",
        "A cat sits.",
    ]
    assert demo.main(args) == 0
    difference = capsys.readouterr().out.splitlines()[-1]
    assert difference.startswith("max |difference| of embeddings")
    assert float(difference.split()[-1]) < 0.02


@pytest.mark.slow
def test_smollm2_demo_generates_the_hf_tokens(smollm2, monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_smollm2", lambda: smollm2)
    assert demo.main(["--model", "smollm2", "--max-new-tokens", "4"]) == 0
    assert "identical tokens: yes" in capsys.readouterr().out


def test_demo_rejects_a_single_sentence():
    with pytest.raises(SystemExit):
        demo.main(["--model", "minilm", "--text", "alone"])
