"""bench/ runs: each script at a toy size prints its table (a smoke test; nothing here is timed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.serial  # load burners, thread policies and stage time limits: run alone

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, *args: str) -> str:
    cmd = [sys.executable, str(BENCH / script), "--toy", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_bench_speed_prints_its_tables():
    pytest.importorskip("diffusers")
    out = run("bench_speed.py")
    for text in ("## toy: 8x8, batch 4", "| mode ", "| dtools ", "| diffusers bf16-cl", "vs diffusers best",
                 "of GEMM rate", "peak MiB", "data path: the loader delivers", "## summary"):
        assert text in out, out


def test_bench_kernels_prints_its_tables():
    out = run("bench_kernels.py")
    assert "| GroupNorm fp32 2x8x4x4 " in out and "| attention bf16 L=16 " in out, out


def test_bench_threads_prints_its_table():
    out = run("bench_threads.py", "--policies", "spin-guard", "--precisions", "fp32",
              "--loads", "idle,burner")
    assert "| fp32 spin-guard " in out and "burner" in out, out


def test_gpu_check_runs_at_toy_size_on_the_cpu(tmp_path):
    """bench/gpu_check.sh end to end at toy size (its CUDA tests skip here): every stage runs and
    writes its files, the summary names each stage's outcome."""
    import os

    out = tmp_path / "gpu-check"
    res = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(out), "--toy", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    for stage in ("stage a (pytest -m cuda): ok", "stage c (seed run, 0.1 min): ok",
                  "stage b (bench_speed): ok"):
        assert stage in summary, summary
    assert '"seed_run_projected_min"' in summary and '"fid"' in summary, summary
    for name in ("a_pytest.log", "b_bench.log", "b_bench.json", "c_seed.log", "c_loss.png", "c_samples.png",
                 "c_samples.npy"):
        assert (out / name).stat().st_size > 0, name
