"""Train's sample grids are what `dtools sample` draws from the checkpoint with the same seed: both run
the network through Runtime.model_fn (precision, memory format), so not a pixel differs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dtools import train as training
from dtools.grid import make_grid
from dtools.sample import SampleConfig, Sink
from dtools.sample import run as sample

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_train_grid_is_what_dtools_sample_draws(data8, tmp_path, config, fit, precision):
    run = tmp_path / "run"
    cfg = config(data8, run, max_steps=3, save_every=3, sample_every=3, sample_count=4, precision=precision,
                 seed=5)
    fit(cfg)
    with Image.open(run / training.SAMPLES_DIR / "step_000003.png") as im:
        grid = np.asarray(im.convert("RGB"))
    out = tmp_path / "samples.npy"
    sink = Sink(str(out), 4, force=False, log=lambda m: None)
    cfg = SampleConfig(run / training.MODEL_FILE, n=4, seed=5, precision=precision)
    sample(cfg, sink, log=lambda m: None)
    sink.close()
    images = np.load(out, allow_pickle=False)  # (4, 8, 8, 3)
    assert np.array_equal(make_grid(images, nrow=2, scale=8), grid)
