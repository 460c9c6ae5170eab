"""`make demo`'s script at a tiny budget, end to end, so that it cannot rot.

It runs demo/run.sh exactly as `make demo` does (dtools on PATH, knobs in the environment) and checks
that every stage left its files and that REPORT.md shows every picture it links and a filled table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "DEMO_MINUTES": "0.05",
    "DEMO_SIZE": "16",
    "DEMO_IMAGES": "48",
    "DEMO_SAMPLES": "8",
    "DEMO_REF": "16",
    "DEMO_DDPM_N": "2",
}


def run_demo(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **TINY, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    cmd = ["bash", str(ROOT / "demo" / "run.sh"), str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_demo_runs_end_to_end_and_its_report_is_complete(tmp_path):
    out = tmp_path / "demo"
    proc = run_demo(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    report = (out / "REPORT.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) >= 10, links
    for link in links:
        assert (out / link).is_file(), f"REPORT.md links {link}, which the demo did not make"
    for name in ("schedules.png", "noising.png", "run/loss.png", "run/model.safetensors"):
        assert (out / name).is_file(), name
    assert len(list((out / "data").glob("*.png"))) == int(TINY["DEMO_IMAGES"])

    # The sampler table: every row has its image count and wall time; the fast rows have FID and KID.
    heads = ("| DDPM ancestral |", "| DDIM (η = 0) |", "| DPM-Solver++ 2M |",
             "| DPM-Solver++ 2M, autoguided (the default) |")
    rows = [line for line in report.splitlines() if line.startswith(heads)]
    assert len(rows) == 5, rows
    # guided calls counted when the run kept its guide (a 3-second run on a loaded machine may end at its
    # first step, before --guide-at)
    calls = "40" if (out / "run" / "guide.safetensors").is_file() else "20"
    assert rows[-1].split("|")[2].strip() == calls, rows[-1]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(r"\d+", cells[2]) and re.fullmatch(r"\d+\.\d", cells[3]), row
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(r"-?\d+\.\d", cells[4]) and re.fullmatch(r"-?\d+\.\d{4}", cells[5]), row

    # The shipped model's section: its grid, and what `dtools info` says of it (no machine's path);
    # at 16x16 no FID against the 32x32 model.
    assert "## 7. What a longer run gives" in report and "(pretrained.png)" in report
    assert "packed    ema weights in float16 by `dtools pack`" in report
    assert "demo/pretrained/emoji32" in report and str(ROOT) not in report
    assert "No FID: the shipped model makes 32x32 images, this demo ran at 16x16" in report


def test_the_shipped_model_is_small_and_says_where_it_came_from():
    from dtools.checkpoint import read_info

    folder = ROOT / "demo" / "pretrained" / "emoji32"
    assert sorted(p.name for p in folder.iterdir()) == ["guide.safetensors", "model.safetensors"]
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5_000_000
    info = read_info(folder / "model.safetensors")
    assert info["weights"] == ["ema"] and info["packed"]["dtype"] == "float16"
    assert info["train"]["data"] == "data" and info["train"]["num_images"] == 4009  # all of twemoji
    assert info["packed"]["from"] == "emoji32-run/model.safetensors"  # demo/pretrained/make.sh's names
    steps = re.search(r'STEPS=\$\{PRETRAINED_STEPS:-(\d+)\}', (folder.parent / "make.sh").read_text())
    assert steps and info["step"] == int(steps.group(1)) == info["train"]["max_steps"]


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    proc = run_demo(out)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert (out / "thesis.tex").read_text() == "precious"
