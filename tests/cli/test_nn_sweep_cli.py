"""`dtools nn` and `dtools sweep` on the command line: the table on stdout, --json, a real shell pipe
from `dtools sample`, and one-line errors (usage errors exit 2). Pixel space only (no network) except
for one small sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from dtools.cli import app

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "v0.1.0"
CKPT = FIXTURE / "run" / "model.safetensors"
DATA = FIXTURE / "data"
DTOOLS = Path(sys.executable).parent / "dtools"


def _invoke(*args: str, input: bytes | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def test_nn_table_on_stdout_and_json(tmp_path):
    from dtools.images import read_source

    train = read_source(str(DATA), channels=3)  # 6 emoji, 8x8
    np.save(tmp_path / "s.npy", np.concatenate([train[[2]], 255 - train[[0, 1]]]))
    r = _invoke("nn", DATA, tmp_path / "s.npy", "--space", "pixel", "-o", tmp_path / "nn.png")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("copies: 1 of 3 samples (33.3%")
    assert "| 0 | yes | " in r.stdout and "000002.png" in r.stdout
    assert f"wrote {tmp_path / 'nn.png'}" in r.stderr and (tmp_path / "nn.png").is_file()
    r = _invoke("nn", DATA, tmp_path / "s.npy", "--space", "pixel", "--json", "--top", "1")
    report = json.loads(r.stdout)
    assert report["copies"] == 1 and len(report["worst"]) == 1 and report["grid"] is None


def test_nn_reads_samples_from_a_real_pipe():
    cmd = (f"{DTOOLS} sample {CKPT} -n 4 --steps 5 --sampler ddim 2>/dev/null "
           f"| {DTOOLS} nn {DATA} - --space pixel --json")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    report = json.loads(out.stdout)
    assert report["samples"] == {"source": "stdin", "images": 4} and report["train"]["images"] == 6


def test_nn_errors(tmp_path):
    r = _invoke("nn", DATA, DATA, "--space", "pixels")
    assert r.exit_code == 2 and "--space" in r.stderr
    r = _invoke("nn", DATA, tmp_path / "missing.npy", "--space", "pixel")
    assert r.exit_code == 1 and r.stderr.strip().startswith("Error: ") and "\n" not in r.stderr.strip()
    np.save(tmp_path / "one.npy", np.zeros((1, 8, 8, 3), np.uint8))
    r = _invoke("nn", tmp_path / "one.npy", DATA, "--space", "pixel")
    assert r.exit_code == 1 and "at least 2 distinct training images" in r.stderr


def test_sweep_prints_a_markdown_table(tmp_path):
    r = _invoke("sweep", CKPT, DATA, "-s", "ddim:5,dpm++2m:5", "-n", "8", "--subsets", "10",
                "-o", tmp_path / "sw")
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("| setting | network calls |") and lines[2].startswith("| ddim:5 | 5 | ")
    assert lines[3].startswith("| dpm++2m:5 | 5 | ")
    assert "Warning: FID from 6 images is biased" in r.stderr
    assert sorted(p.name for p in (tmp_path / "sw").iterdir()) == [
        "ddim-5.npy", "dpm++2m-5.npy", "reference.safetensors", "sweep.json", "sweep.png"]


def test_sweep_errors_before_any_work(tmp_path):
    r = _invoke("sweep", CKPT, DATA, "-s", "10,ddim:5", "-o", tmp_path / "sw")
    assert r.exit_code == 2 and "has no sampler before it" in r.stderr
    r = _invoke("sweep", CKPT, DATA, "-s", "ddim:500", "-o", tmp_path / "sw")
    assert r.exit_code == 2 and "ddim:500" in r.stderr and "[2, 50]" in r.stderr
    r = _invoke("sweep", tmp_path / "nope.safetensors", DATA, "-s", "ddim:5", "-o", tmp_path / "sw")
    assert r.exit_code == 1 and r.stderr.startswith("Error: ")
    assert not (tmp_path / "sw").exists()


def test_sweep_guides_every_setting_and_counts_the_guides_calls(tmp_path):
    import shutil

    from dtools.checkpoint import read_model, save_model

    sets, info = read_model(CKPT)  # a weaker guide: the raw weights of the same run
    guide = tmp_path / "guide.safetensors"
    meta = {k: v for k, v in info.items() if k not in ("model", "model_type", "weights")}
    save_model(guide, {"ema": sets["raw"]}, config=info["model"], model_type=info["model_type"], meta=meta)
    r = _invoke("sweep", CKPT, DATA, "-s", "ddim:5", "-n", "8", "--subsets", "10", "--guide", guide,
                "--guidance", "1", "-o", tmp_path / "sw")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[2].startswith("| ddim:5 | 10 | ")  # 5 calls of the model, 5 of the guide
    r = _invoke("sweep", CKPT, DATA, "-s", "ddim:5", "--guidance", "1", "-o", tmp_path / "sw2")
    assert r.exit_code == 1 and "no null class" in r.stderr
    assert not (tmp_path / "sw2").exists()
    shutil.rmtree(tmp_path / "sw")


def test_sweep_crosses_guidance_weights_and_intervals_with_the_samplers(tmp_path):
    """--guidance 0,1 --guidance-interval 0,inf --guidance-interval 0.28,5.42: each weight in each
    interval a setting of its own (w=0 once: no guidance has no interval), named in the table, the
    JSON, the file names and the plot's lines; the same seeds everywhere, so w=0 is the unguided run."""
    import json

    from dtools.checkpoint import read_model, save_model

    sets, info = read_model(CKPT)
    guide = tmp_path / "guide.safetensors"
    meta = {k: v for k, v in info.items() if k not in ("model", "model_type", "weights")}
    save_model(guide, {"ema": sets["raw"]}, config=info["model"], model_type=info["model_type"], meta=meta)
    out = tmp_path / "sw"
    r = _invoke("sweep", CKPT, DATA, "-s", "ddim:5", "-n", "8", "--subsets", "10", "--guide", guide,
                "--guidance", "0,1", "--guidance-interval", "0,inf", "--guidance-interval", "0,0.5",
                "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [row["setting"] for row in rows] == [
        "ddim:5 w=0", "ddim:5 w=1 in (0,inf]", "ddim:5 w=1 in (0,0.5]"]
    assert [row["nfe"] for row in rows][:2] == [5, 10] and 5 < rows[2]["nfe"] < 10  # guided where σ <= 0.5
    assert sorted(p.name for p in out.glob("*.npy")) == [
        "ddim-5-w0.npy", "ddim-5-w1-0-0.5.npy", "ddim-5-w1-0-inf.npy"]
    assert len({row["fid"] for row in rows}) == 3
    unguided = tmp_path / "u.npy"
    assert _invoke("sample", CKPT, "-n", "8", "-s", "ddim", "--steps", "5", "-o", unguided).exit_code == 0
    assert (np.load(unguided, allow_pickle=False) == np.load(out / "ddim-5-w0.npy", allow_pickle=False)).all()
    for bad, needle in ((["--guidance", "1,x"], "--guidance"), (["--guidance", "1,1"], "listed twice"),
                        (["--guidance", "1", "--guidance-interval", "1,2", "--guidance-interval", "1,2"],
                         "given twice")):
        r = _invoke("sweep", CKPT, DATA, "-s", "ddim:5", "--guide", guide, *bad, "-o", tmp_path / "bad")
        assert r.exit_code != 0 and needle in r.stderr, r.stderr
        assert not (tmp_path / "bad").exists()
