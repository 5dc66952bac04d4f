"""benchmarks/grpc_floor.py, briefly: two processes ping-pong and one row per run comes back."""

from benchmarks import grpc_floor


def test_script_prints_ordered_round_trip_quantiles_per_run(capsys):
    assert grpc_floor.main(["--runs", "2", "--repeats", "20"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line[:3] in ("| 1", "| 2")]
    assert len(rows) == 2
    for row in rows:
        p10, median, p90 = (float(cell) for cell in row.strip("|").split("|")[1:])
        assert 0 < p10 <= median <= p90
