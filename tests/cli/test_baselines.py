"""`dtools train --model dcgan|vae` and `dtools sample` on their checkpoints: in-process, through real
shell pipes into `grid` and `fid`, and the refusals of options that do not apply."""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from dtools.cli import app
from dtools.tensorfile import read_header

DTOOLS = pathlib.Path(sys.executable).parent / "dtools"
TINY = ["--base-channels", "8", "--latent-dim", "16", "--batch", "8", "--sample-every", "0",
        "--log-every", "1"]

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def one_error_line(result, match: str, code: int = 1) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], result.stderr


def images(result) -> np.ndarray:
    assert result.exit_code == 0, result.stderr
    return np.load(io.BytesIO(result.stdout_bytes), allow_pickle=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
    sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))
    from conftest import make_tiny_pngs

    folder = tmp_path_factory.mktemp("emoji") / "data"
    make_tiny_pngs(folder, n=12, size=8)
    return folder


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, pathlib.Path]:
    """A 4-step run of each baseline, trained through the command."""
    out = {}
    for model in ("dcgan", "vae"):
        run = tmp_path_factory.mktemp(model) / "run"
        result = invoke("train", data, "--model", model, "-o", run, "--max-steps", 4, *TINY)
        assert result.exit_code == 0, result.stderr
        assert "done: 4 steps, " in result.stderr and result.stdout == ""
        out[model] = run / "model.safetensors"
    return out


def test_train_says_its_losses_and_dry_run_counts_both_networks(data, runs, tmp_path):
    header = read_header(runs["dcgan"], "dtools.model")
    assert header["model_type"] == "dcgan" and header["train"]["d_steps"] == "1:1"
    assert read_header(runs["vae"], "dtools.model")["train"]["kl_weight"] == 1.0
    result = invoke("train", data, "--model", "dcgan", "-o", tmp_path / "r", "--max-steps", 3, "--dry-run")
    out = json.loads(result.stdout)
    assert (out["config"]["lr"], out["config"]["batch_size"], out["config"]["d_steps"]) == (2e-4, 128, "1:1")
    assert set(out["resolved"]["parameters_by_network"]) == {"generator", "discriminator"}
    assert out["resolved"]["parameters"] == sum(out["resolved"]["parameters_by_network"].values())
    result = invoke("train", "--resume", "-o", runs["vae"].parent, "--max-steps", 5)
    assert result.exit_code == 0, result.stderr
    assert all(text in result.stderr for text in ("done: 1 more step, 4 -> 5, loss ", ", recon ", ", kl "))


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_sample_draws_from_the_prior_image_by_image(runs, model):
    ckpt = runs[model]
    whole = images(invoke("sample", ckpt, "-n", 5))
    assert whole.shape == (5, 8, 8, 3) and len({whole[i].tobytes() for i in range(5)}) == 5
    np.testing.assert_array_equal(whole, images(invoke("sample", ckpt, "-n", 5, "--batch-size", 2)))
    np.testing.assert_array_equal(whole[:2], images(invoke("sample", ckpt, "-n", 2)))
    assert not np.array_equal(whole[:2], images(invoke("sample", ckpt, "-n", 2, "--seed", 1)))
    assert not np.array_equal(whole[:2], images(invoke("sample", ckpt, "-n", 2, "--weights", "raw")))
    result = invoke("sample", ckpt, "-n", 2)
    assert f", {model}, ema weights): z ~ N(0, I) of 16 dimensions, 1 network call/image" in result.stderr


@pytest.mark.parametrize("args", [("--steps", 4), ("--sampler", "ddim"), ("--eta", 0.5), ("--no-clip",),
                                  ("--spacing", "leading"), ("--trajectory", 3)])
def test_sampler_options_are_refused(runs, args):
    result = invoke("sample", runs["dcgan"], "-n", 1, *args)
    one_error_line(result, f"{args[0]} does not apply to this dcgan checkpoint")


def test_train_refuses_what_does_not_apply(data, tmp_path):
    out = tmp_path / "r"
    one_error_line(invoke("train", data, "--model", "dcgan", "--beta", "cosine", "-o", out),
                   "--beta applies to --model unet, not dcgan")
    one_error_line(invoke("train", data, "--model", "vae", "--param", "v", "-o", out),
                   "--param applies to --model unet, not vae")
    one_error_line(invoke("train", data, "--d-steps", "1:2", "--beta", "cosine", "-o", out),
                   "--d-steps applies to --model dcgan, not unet")
    bad = invoke("train", data, "--model", "gan", "-o", out)  # not one of the choices: a usage error
    assert bad.exit_code == 2 and "'gan' is not one of unet, dcgan, vae" in bad.stderr, bad.stderr
    assert not out.exists()


def test_real_shell_pipes_into_grid_and_fid(runs, data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    png = tmp_path / "gan.png"
    cmd = f"set -o pipefail; '{DTOOLS}' sample '{runs['dcgan']}' -n 4 | '{DTOOLS}' grid --nrow 4 -o '{png}'"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    cmd = f"set -o pipefail; '{DTOOLS}' sample '{runs['vae']}' -n 6 | '{DTOOLS}' fid '{data}' - --json"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["fid"] > 0 and report["samples"] == {**report["samples"], "source": "stdin", "images": 6}
