"""benchmarks.gpu, the one-command GPU check, in its short CPU form (as CI runs it)."""

import re
import subprocess
import sys
from pathlib import Path

import torch

import veil.mpc.ring_matmul as rm
from benchmarks import gpu

ROOT = Path(__file__).resolve().parents[1]


def test_short_cpu_run_passes_every_exactness_check(tmp_path):
    out = tmp_path / "gpu.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--short", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    passed, total = map(int, re.search(r"exactness: (\d+) of (\d+) checks passed", text).groups())
    assert passed == total >= 10  # 3 GEMMs, 4 protocols, 3 models
    assert "FAIL" not in text and "skipped" not in text
    for section in ("## Ring GEMM", "## Protocols", "## Models", "BERT", "GPT-2", "LLaMA"):
        assert section in text


def test_an_inexact_kernel_is_reported_as_failed(tmp_path, monkeypatch):
    def off_by_one(a, b):
        return torch.matmul(a, b) + 1

    monkeypatch.setattr(rm.CUDA_CHOOSER, "kernels", {"float64 limbs": rm.limb_matmul, "broken": off_by_one})
    report = gpu.Report(tmp_path / "gpu.md", "cpu", short=True)
    gpu.check_gemm(report, torch.device("cpu"), short=True)
    assert {v for _, v in report.verdicts} == {gpu.FAIL}
    assert "0 of 3 checks passed" in (tmp_path / "gpu.md").read_text()


def test_fixed_keys_make_runs_repeat_and_only_inside():
    def shares(party):
        return gpu.mpc.share(party, torch.randn(3, 4, generator=torch.Generator().manual_seed(0))).data

    with gpu.fixed_keys():
        first = gpu.mpc.simulate(shares)
    with gpu.fixed_keys():
        second = gpu.mpc.simulate(shares)
    fresh = gpu.mpc.simulate(shares)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not any(torch.equal(a, b) for a, b in zip(first, fresh))
