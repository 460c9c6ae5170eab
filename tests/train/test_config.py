"""The training configuration: presets, options and their flags, a new run's and a resumed run's config."""

from __future__ import annotations

import pytest
import torch

from dtools import train as training
from dtools.errors import DtoolsError
from dtools.schedules import make_schedule
from dtools.train.config import PRESETS, preset_config, preset_for_size
from dtools.train.data import load_images
from dtools.unet import UNet, count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")


def test_epochs_set_the_step_count(data8, tmp_path, config):
    cfg = config(data8, tmp_path / "r", epochs=2.5)  # 24 images, batch 8: 7.5 batches
    assert cfg.max_steps is None and cfg.total_steps() == 8
    assert config(data8, tmp_path / "r", epochs=10, max_steps=5).total_steps() == 5


def test_bad_data_and_schedules(data8, tmp_path, tiny_unet, betas):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DtoolsError, match="no images"):
        load_images(str(empty))
    ztsnr = make_schedule("cosine", 100, zero_terminal_snr=True)
    with pytest.raises(DtoolsError, match="zero terminal SNR.*--param v"):
        training.new_config(str(data8), str(tmp_path / "r"), "z", ztsnr, (24, 8, 8, 3), dict(tiny_unet))
    cfg = training.new_config(str(data8), str(tmp_path / "r"), "z", ztsnr, (24, 8, 8, 3),
                              {**tiny_unet, "parameterization": "v"})
    assert cfg.parameterization == "v"
    with pytest.raises(DtoolsError, match="square"):
        training.new_config(str(data8), "r", "cosine", betas, (24, 8, 16, 3), {})
    with pytest.raises(DtoolsError, match="grad-accum"):
        training.new_config("d", "r", "cosine", betas, (24, 8, 8, 3), {"batch_size": 9, "grad_accum": 2})
    with pytest.raises(DtoolsError, match="not divisible"):
        training.new_config(str(data8), "r", "cosine", betas, (24, 30, 30, 3), {})


def test_presets_resolve_by_image_size(betas):
    expect = ((16, "cpu16", 1e-3, 16), (32, "cpu32", 1e-3, 16), (64, "seed64", 1e-4, 128))
    for size, preset, lr, batch in expect:
        cfg = training.new_config("d", "r", "cosine", betas, (100, size, size, 3), {})
        assert (cfg.preset, cfg.lr, cfg.batch_size) == (preset, lr, batch)
    seed = training.new_config("d", "r", "cosine", betas, (100, 64, 64, 3), {})
    assert (seed.ema_decay, seed.ema_warmup, seed.max_steps, seed.flip) == (0.999, False, 25_000, True)


def test_seed_preset_is_the_seed_network():
    cfg = preset_config("auto", 64, 3)
    assert preset_for_size(64) == "seed64"
    assert (cfg.base_channels, cfg.channel_mult, cfg.num_res_blocks, cfg.attention_resolutions) == (
        64, (1, 2, 4), 2, (16,))
    assert cfg.resolutions == [64, 32, 16]
    model = UNet(cfg)
    assert 10e6 < count_parameters(model) < 20e6
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64), torch.tensor([5])).shape == (1, 3, 64, 64)


def test_presets_pick_by_size():
    assert [preset_for_size(s) for s in (8, 16, 17, 32, 48, 64, 128)] == [
        "cpu16", "cpu16", "cpu32", "cpu32", "seed64", "seed64", "seed64"]
    for name in PRESETS:
        cfg = preset_config(name, 64, 3).validate()
        assert cfg.image_size == 64
    with pytest.raises(DtoolsError, match="preset"):
        preset_config("huge", 32, 3)


def test_resume_refuses_changes_that_break_the_run(betas):
    saved = training.new_config("d", "r", "cosine", betas, (100, 16, 16, 3), {}).to_dict()
    cfg = training.resume_config(saved, betas, {"max_steps": 9000, "lr": None, "device": "cpu"})
    assert cfg.max_steps == 9000 and cfg.device == "cpu"
    with pytest.raises(DtoolsError, match="--lr cannot change"):
        training.resume_config(saved, betas, {"lr": 0.5})
    with pytest.raises(DtoolsError, match="--batch cannot change"):
        training.resume_config(saved, betas, {"batch_size": 3})
    assert training.resume_config(saved, betas, {"lr": saved["lr"]}).lr == saved["lr"]  # same value is fine
