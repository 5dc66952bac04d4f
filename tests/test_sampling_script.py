"""benchmarks/sampling.py runs and prints one row per selection with its counted cost."""

from benchmarks import sampling


def test_sampling_benchmark_prints_each_selection_with_rounds_and_bytes(capsys):
    assert sampling.main(["--vocab", "64"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    body = {row.split("|")[1].strip(): row.split("|")[2:-1] for row in rows[1:]}
    assert set(body) == set(sampling.CASES)
    for cells in body.values():
        sent_mb, rounds = float(cells[1]), int(cells[2])
        assert sent_mb > 0 and rounds > 0
    # Sampling pays the max, exp and a cumulative comparison: deeper than the greedy argmax.
    assert int(body["sample T=1"][2]) > int(body["greedy argmax"][2])
