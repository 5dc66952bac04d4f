"""benchmarks/ring_gemm.py on small shapes: every CPU kernel timed, the kept one named, all exact."""

from benchmarks import ring_gemm


def test_script_prints_a_row_per_shape_with_exact_kernels(monkeypatch, capsys):
    monkeypatch.setattr(ring_gemm, "SHAPES", {
        "small": ((5, 40), (40, 7)),
        "batched": ((3, 6, 9), (3, 9, 4)),
    })
    assert ring_gemm.main(["--runs", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| small", "| batched"))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] == "True"
        assert cells[-3] in ("int64", "wide float64 limbs")
