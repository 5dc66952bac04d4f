"""``veil demo``: our models, in plaintext and on secret shares, print Hugging Face's results."""

from __future__ import annotations

import pytest

from veil.nn import demo


def test_minilm_demo_matches_hf(minilm, monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_minilm", lambda: minilm)
    args = ["--model", "minilm", "--backend", "exact", "--text", "A cat sat.", "--text", "A dog ran."]
    assert demo.main(args) == 0
    out = capsys.readouterr()
    hf, ours = out.out.split("veil (exact)")
    similarity_lines = [line for line in hf.splitlines() if line.startswith("  ")]
    assert similarity_lines == ours.splitlines()[1:2]
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
def test_smollm2_demo_generates_the_hf_tokens_privately(smollm2, monkeypatch, capsys):
    monkeypatch.setattr(demo, "load_smollm2", lambda: smollm2)
    assert demo.main(["--model", "smollm2", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "private run:" in out
    assert "identical tokens: yes" in out


def test_demo_rejects_a_single_sentence():
    with pytest.raises(SystemExit):
        demo.main(["--model", "minilm", "--text", "alone"])
