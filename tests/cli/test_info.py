"""`dtools info`: what a run folder, checkpoint, training state or FID statistics file holds."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch
from typer.testing import CliRunner

from dtools.checkpoint import load_model
from dtools.cli import app
from dtools.tensorfile import save_tensors
from dtools.unet import count_parameters

TINY = ["--beta", "cosine", "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
        "--attention", "4", "--heads", "2", "--batch", "8", "--log-every", "1", "--ema", "0.9"]

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> pathlib.Path:
    """A 3-step run with a sample grid at step 2 and at the end."""
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))
    from conftest import make_tiny_pngs

    base = tmp_path_factory.mktemp("info")
    make_tiny_pngs(base / "data", 6)
    out = base / "run"
    result = invoke("train", base / "data", "-o", out, *TINY, "--max-steps", 3, "--sample-every", 2,
                    "--samples", 1)
    assert result.exit_code == 0, result.stderr
    return out


def test_a_run_folder(run):
    result = invoke("info", run)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"{run}: training run\n")
    for needle in ("unet: U-Net 8x8x3, 8 base channels x (1,2), 1 block(s) per level, attention at 4;",
                   "predicts  v, loss weight Min-SNR-5", "schedule  cosine, T=1000, beta ",
                   "step 3, 24 images seen, 0m0",
                   "EMA       decay 0.9 with warm-up; weights held: ema, raw", "(6 images, fingerprint ",
                   "loss      ", "metrics   3 records to step 3",
                   f"samples   {run}/samples/step_000003.png (2 grids)",
                   f"resume    dtools train --resume -o {run}  (state at step 3)"):
        assert needle in text, needle


def test_a_checkpoint_as_json(run):
    result = invoke("info", run / "model.safetensors", "--json")
    assert result.exit_code == 0, result.stderr
    facts = json.loads(result.stdout)
    network = load_model(run / "model.safetensors").network
    assert facts["kind"] == "unet model checkpoint" and facts["parameters"] == count_parameters(network)
    assert (facts["step"], facts["images_seen"], facts["ema_decay"]) == (3, 24, 0.9)
    assert facts["training_seconds"] > 0 and facts["parameterization"] == "v"
    assert (facts["min_snr_gamma"], facts["t_dist"], facts["learned_weight"]) == (5.0, "uniform", False)
    assert facts["schedule"]["T"] == 1000 and facts["schedule"]["name"] == "cosine"
    assert facts["data"]["images"] == 6 and len(facts["data"]["fingerprint"]) == 16
    assert json.loads(invoke("info", run, "--json").stdout)["last_samples"].endswith("step_000003.png")
    losses = json.loads(invoke("info", run, "--json").stdout)["losses"]
    assert losses["records"] == 3 and set(losses["loss"]) == {"first", "last", "min", "min_step"}


def test_a_training_state_and_fid_statistics(run, tmp_path):
    result = invoke("info", run / "train-state.safetensors")
    assert result.exit_code == 0, result.stderr
    assert "step     3 (3 EMA updates)" in result.stdout
    stats = tmp_path / "stats.safetensors"
    from dtools.fid.stats import STATS_FORMAT

    save_tensors(stats, {"mu": torch.zeros(4)}, {"format": STATS_FORMAT, "images": 500, "source": "data/",
                                                 "weights_sha256": "ab" * 32, "feature_layer": "2048",
                                                 "features": False})
    facts = json.loads(invoke("info", stats, "--json").stdout)
    assert (facts["kind"], facts["images"], facts["source"]) == ("FID statistics", 500, "data/")


def test_what_it_refuses(tmp_path):
    refused = ((tmp_path, "not a run of dtools train"), (tmp_path / "x.safetensors", "no such file"))
    for path, message in refused:
        result = invoke("info", path)
        assert result.exit_code == 1 and result.stderr.startswith("Error: ") and message in result.stderr
    (tmp_path / "config.json").write_text("{}")
    assert "checkpoint  none yet" in invoke("info", tmp_path).stdout
