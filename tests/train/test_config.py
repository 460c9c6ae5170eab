"""The training configuration: presets, options and their flags, a new run's and a resumed run's config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dtools import train as training
from dtools.errors import DtoolsError
from dtools.schedule_io import load_schedule
from dtools.schedules import make_schedule
from dtools.train.data import load_images
from dtools.train.presets import PRESETS, preset_config, preset_for_size
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
        training.new_config(str(data8), str(tmp_path / "r"), "z", ztsnr, (24, 8, 8, 3),
                            {**tiny_unet, "parameterization": "eps"})
    cfg = training.new_config(str(data8), str(tmp_path / "r"), "z", ztsnr, (24, 8, 8, 3), dict(tiny_unet))
    assert cfg.parameterization == "v"  # the CPU presets' default, which such a schedule needs
    seed = training.new_config(str(data8), str(tmp_path / "r"), "cosine", betas, (24, 64, 64, 3), {})
    assert (seed.parameterization, seed.min_snr_gamma) == ("eps", None)  # the seed's recipe
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
    with pytest.raises(DtoolsError, match="--batch-size cannot change"):
        training.resume_config(saved, betas, {"batch_size": 3})
    assert training.resume_config(saved, betas, {"lr": saved["lr"]}).lr == saved["lr"]  # same value is fine


def test_t_dist_is_recorded_kept_on_resume_and_checked(betas):
    """--t-dist lognormal travels in config.json and a resumed run keeps it; the default (uniform)
    is left out of the dict, so runs of earlier versions resume unchanged; a bad value is refused."""
    plain = training.new_config("d", "r", "cosine", betas, (100, 16, 16, 3), {}).to_dict()
    assert "t_dist" not in plain
    shape = (100, 16, 16, 3)
    saved = training.new_config("d", "r", "cosine", betas, shape, {"t_dist": "lognormal"}).to_dict()
    assert saved["t_dist"] == "lognormal"
    assert training.resume_config(saved, betas, {"max_steps": 10}).t_dist == "lognormal"
    assert training.resume_config(plain, betas, {"max_steps": 10}).t_dist == "uniform"
    with pytest.raises(DtoolsError, match="--t-dist cannot change"):
        training.resume_config(saved, betas, {"t_dist": "uniform"})
    with pytest.raises(DtoolsError, match="--t-dist.*lognormal"):
        training.new_config("d", "r", "cosine", betas, (100, 16, 16, 3), {"t_dist": "gamma"})


def test_the_betas_travel_inside_the_config_but_not_in_its_dict(betas):
    cfg = training.new_config("d", "r", "cosine", betas, (100, 16, 16, 3), {})
    assert cfg.betas.dtype == np.float64 and np.array_equal(cfg.betas, betas) and cfg.T == len(betas)
    d = cfg.to_dict()
    assert "betas" not in d and list(d)[:3] == ["data", "out", "beta"] and list(d)[-1] == "data_fingerprint"
    again = training.TrainConfig.from_dict(d, betas)
    assert again.to_dict() == d and np.array_equal(again.betas, betas)
    with pytest.raises(DtoolsError, match="incomplete"):
        training.TrainConfig.from_dict({"data": "d"}, betas)


def test_every_option_names_its_flag_once(betas):
    assert [training.flag(n) for n in ("batch_size", "parameterization", "ema_decay", "sample_count")] == [
        "--batch-size", "--param", "--ema", "--samples"]
    assert [training.flag(n) for n in ("num_heads", "num_res_blocks", "attention_resolutions")] == [
        "--heads", "--res-blocks", "--attention"]
    fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    assert set(training.OPTIONS) <= fields | set(training.MODEL_OPTIONS)
    assert not {"data", "out", "beta", "betas", "model", "T", "num_images"} & set(training.OPTIONS)
    # messages name the flags, not the fields
    saved = training.new_config("d", "r", "cosine", betas, (100, 16, 16, 3), {}).to_dict()
    with pytest.raises(DtoolsError, match="^--heads cannot change"):
        training.resume_config(saved, betas, {"num_heads": 1})
    with pytest.raises(DtoolsError, match="^--res-blocks cannot change"):
        training.resume_config(saved, betas, {"num_res_blocks": 7})  # (the run's own value is no change)
    with pytest.raises(DtoolsError, match="^--samples must be positive"):
        training.resume_config(saved, betas, {"sample_count": 0})


def test_configure_parses_integer_lists_asks_for_data_and_defaults_the_schedule(data8, tmp_path):
    from dtools.errors import OptionError

    opts = {"channel_mult": "1, 2", "attention_resolutions": "none", "num_heads": 1, "max_steps": 3}
    cfg = training.configure(str(tmp_path / "r"), str(data8), "cosine", opts)
    assert (cfg.model["channel_mult"], cfg.model["attention_resolutions"]) == ([1, 2], [])
    with pytest.raises(OptionError, match="expected integers like 1,2,2, got '1,x'") as e:
        training.configure(str(tmp_path / "r"), str(data8), "cosine", {"channel_mult": "1,x"})
    assert e.value.option == "--channel-mult"
    with pytest.raises(OptionError) as e:
        training.configure(str(tmp_path / "r"), None, "cosine", {})
    assert e.value.option == "DATA"
    cfg = training.configure(str(tmp_path / "r"), str(data8), None, {})
    assert cfg.beta == "cosine" and np.array_equal(cfg.betas, load_schedule("cosine"))
    assert not (tmp_path / "r").exists()



def test_an_ema_length_no_power_ema_can_have_is_refused_in_one_line(data8, tmp_path, config, fit, betas):
    """--ema-length between 0.3003 and 0.49 was accepted and crashed at the first EMA update with a
    traceback (0.0 ** negative): now a one-line error; the widest length that exists trains."""
    shape = (100, 16, 16, 3)
    for bad in (0.31, 0.45):
        with pytest.raises(DtoolsError, match=r"^--ema-length .*\(0, 0\.3003\]") as e:
            training.new_config("d", "r", "cosine", betas, shape, {"ema_length": bad})
        assert "\n" not in str(e.value)
    result = fit(config(data8, tmp_path / "run", max_steps=2, ema_length=0.3002))
    assert result.step == 2


def test_grey_data_is_not_flipped_unless_asked():
    """Digits and glyphs have a handedness: grey data trains without flips by default, colour data with."""
    from dtools.train.resolve import new_config

    betas = np.linspace(1e-4, 0.02, 10)
    grey = new_config("d", "r", None, betas, (8, 8, 8, 1), {})
    colour = new_config("d", "r", None, betas, (8, 8, 8, 3), {})
    forced = new_config("d", "r", None, betas, (8, 8, 8, 1), {"flip": True})
    off = new_config("d", "r", None, betas, (8, 8, 8, 3), {"flip": False})
    assert (grey.flip, colour.flip, forced.flip, off.flip) == (False, True, True, False)
