"""`python -m benchmarks.models llama7b` runs end to end (tiny shapes) and prints its figures."""

from __future__ import annotations

import re

from benchmarks.models import main


def test_llama7b_benchmark_prints_every_figure_in_both_modes(capsys, tmp_path) -> None:
    for mode in ("store", "regenerate"):
        assert main(["llama7b", "--tiny", "--layers", "1", "--settings", "4", "--new-tokens", "2",
                     "--mode", mode, "--store", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert f"mode: {mode}" in out
        for figure in ("4 in -> 1 out: wall", "4 in -> 2 out (KV cache): wall"):
            line = next(line for line in out.splitlines() if line.startswith(figure))
            assert re.search(r"\d+ critical-path rounds", line) and "GB sent per party" in line
            assert "peak RSS" in line
        assert "seed expansion" in out and "max logit error" in out and "tokens private" in out
    assert list(tmp_path.iterdir()) == []  # the stores were removed
