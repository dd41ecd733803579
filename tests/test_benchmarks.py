"""Benchmark scripts: dry runs only (no timing, no GPU needed)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_gpu_check_dry_run_prints_plan_and_exits_0():
    out = _run("--dry-run")
    assert out.returncode == 0, out.stderr
    for key in ("msda", "varlen", "scan", "gemm", "dcn", "bsqa", "hrsam"):
        assert f"  {key}" in out.stdout
    assert "dry run: nothing executed" in out.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only exit")
def test_gpu_check_exits_cleanly_without_cuda():
    out = _run("--only", "varlen")
    assert out.returncode == 0, out.stderr
    assert "no CUDA device" in out.stdout
