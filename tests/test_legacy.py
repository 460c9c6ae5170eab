"""Runs written by dtools 0.1.0 (tests/fixtures/v0.1.0, see its README) still load and resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dtools.cli import app

FIXTURE = Path(__file__).parent / "fixtures" / "v0.1.0"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_a_0_1_0_checkpoint_samples_what_it_sampled_then(runner, tmp_path, weights):
    out = tmp_path / f"{weights}.npy"
    ckpt = FIXTURE / "run" / "model.safetensors"
    result = runner.invoke(app, ["sample", str(ckpt), "-n", "2", "--steps", "5", "--sampler", "ddim",
                                 "--weights", weights, "-o", str(out)])
    assert result.exit_code == 0, result.output
    then = np.load(FIXTURE / f"{weights}.npy", allow_pickle=False)
    now = np.load(out, allow_pickle=False)
    assert now.shape == then.shape == (2, 8, 8, 3)
    # the same network and noise: equal up to float rounding on another CPU (one grey level)
    assert np.abs(now.astype(int) - then.astype(int)).max() <= 1


def test_a_0_1_0_run_resumes(runner, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    result = runner.invoke(app, ["train", str(FIXTURE / "data"), "--resume", "-o", str(run),
                                 "--max-steps", "6", "--sample-every", "0"])
    assert result.exit_code == 0, result.output
    assert "step 6/6" in result.output


def test_a_0_1_0_run_resumes_through_the_api(tmp_path):
    """configure() reads the 0.1.0 state as it is, and a resumed session writes its files in the same
    formats: config.json and the checkpoints' "train" header have exactly the keys 0.1.0 wrote."""
    import json

    from dtools import train as training
    from dtools.tensorfile import read_header

    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    saved = read_header(run / training.STATE_FILE, "dtools.train-state")["train"]
    data, beta = str(FIXTURE / "data"), str(FIXTURE / "beta.npy")
    cfg = training.configure(str(run), data, beta, {"max_steps": 6, "sample_every": 0}, resume=True)
    assert cfg.to_dict() == {**saved, "data": data, "out": str(run), "max_steps": 6, "sample_every": 0}
    assert np.array_equal(cfg.betas, np.load(beta, allow_pickle=False))
    result = training.train(cfg, resume=True, progress=False, log=lambda m: None)
    assert (result.step, result.checkpoint_step, result.stopped) == (6, 6, "done")
    then = json.loads((FIXTURE / "run" / training.CONFIG_FILE).read_text())
    now = json.loads((run / training.CONFIG_FILE).read_text())
    assert list(now) == list(then) and list(now["resolved"]) == list(then["resolved"])
    for name, fmt in ((training.MODEL_FILE, "dtools.model"), (training.STATE_FILE, "dtools.train-state")):
        header = read_header(run / name, fmt)
        assert list(header["train"]) == list(saved) and header["step"] == 6
