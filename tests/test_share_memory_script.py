"""`python -m benchmarks.share_memory` runs end to end (tiny shapes) and prints its figures."""

from __future__ import annotations

import re

import pytest

from benchmarks.share_memory import main


@pytest.mark.slow  # three party processes and a `veil share` process: about a minute
def test_share_memory_benchmark_shares_layer_by_layer_and_serves(capsys, tmp_path) -> None:
    scratch = tmp_path / "scratch"
    assert main(["--tiny", "--layers", "2", "--dir", str(scratch)]) == 0
    out = capsys.readouterr().out
    assert "one layer at a time (3 groups)" in out  # the embedding/head group and 2 layers
    assert re.search(r"owner: veil share [\d.]+ s, peak RSS [\d.]+ GiB", out)
    assert re.search(r"served: logits of 4 tokens in [\d.]+ s, max logit error", out)
    assert "shared LlamaForCausalLM 'llama': 11 weights" in out
    assert not scratch.exists()  # checkpoint and stores removed
