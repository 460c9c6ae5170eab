"""dtools.fid.sweep (`dtools sweep`): the list of settings reads one way only; on the tiny real
checkpoint of tests/fixtures, every setting is sampled from the same seeds, timed and scored against
one saved reference, and the table, plot and report come out; nothing is redone or overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtools.errors import DtoolsError, OptionError
from dtools.fid.stats import load_stats
from dtools.fid.sweep import Setting, SweepConfig, markdown, parse_settings, resolve_settings, sweep

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "v0.1.0"
CKPT = FIXTURE / "run" / "model.safetensors"  # 8x8 images, T = 50

pytestmark = pytest.mark.usefixtures("one_thread")


def test_settings_parse_one_way():
    assert parse_settings("ddpm:1000,ddim:50,dpm++2m:10,20") == [
        Setting("ddpm", 1000), Setting("ddim", 50), Setting("dpm++2m", 10), Setting("dpm++2m", 20)]
    assert parse_settings(" heun:10 , ddpm") == [Setting("heun", 10), Setting("ddpm", None)]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("10,ddim:5", "'10' has no sampler before it"),
        ("ddim:5,,ddpm", "empty item"),
        ("ddmi:5", "unknown sampler 'ddmi'"),
        ("ddim:fast", "steps must be a whole number"),
        ("ddim:", "steps must be a whole number"),
        ("ddim:-5", "steps must be a whole number"),
    ],
)
def test_bad_lists_are_one_line_usage_errors(spec, match):
    with pytest.raises(OptionError, match=match) as e:
        parse_settings(spec)
    assert e.value.option == "--samplers" and "\n" not in str(e.value)


def test_steps_are_checked_against_the_checkpoint(tmp_path):
    cfg = SweepConfig(CKPT, "ref", "ddpm,ddim:5,dpm++2m", str(tmp_path))
    assert resolve_settings(cfg) == [Setting("ddpm", 50), Setting("ddim", 5), Setting("dpm++2m", 20)]
    with pytest.raises(OptionError, match=r"ddim:51: --steps must lie in \[2, 50\]"):
        resolve_settings(SweepConfig(CKPT, "ref", "ddim:51", str(tmp_path)))
    with pytest.raises(OptionError, match="ddpm:50 is listed twice"):
        resolve_settings(SweepConfig(CKPT, "ref", "ddpm,ddpm:50", str(tmp_path)))


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("sweep") / "out"
    cfg = SweepConfig(CKPT, str(FIXTURE / "data"), "ddim:5,10,dpm++2m:5", str(out), n=8, subsets=10)
    return sweep(cfg, log=lambda s: None), out


def test_sweep_samples_times_and_scores_every_setting(swept):
    report, out = swept
    rows = report["rows"]
    assert [r["setting"] for r in rows] == ["ddim:5", "ddim:10", "dpm++2m:5"]
    assert [r["nfe"] for r in rows] == [5, 10, 5]
    for r in rows:
        assert r["seconds"] > 0 and r["fid_low"] <= r["fid"] <= r["fid_high"] and r["fid"] > 0
        assert r["kid_subset_size"] == 6 and np.isfinite(r["kid_mean"])
        assert np.load(r["samples_file"]).shape == (8, 8, 8, 3)
    # the same seeds: ddim and dpm++2m at 5 steps draw image i from the same x_T
    a, b = np.load(out / "ddim-5.npy"), np.load(out / "dpm++2m-5.npy")
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 10
    assert report["reference"]["images"] == 6
    assert load_stats(out / "reference.safetensors").features is not None
    assert json.loads((out / "sweep.json").read_text()) == json.loads(json.dumps(report))
    plot = np.asarray(Image.open(out / "sweep.png").convert("RGB")).astype(int)
    assert plot.shape[1] > 300
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # one curve per sampler: ddim, dpm++2m
        assert (np.abs(plot - colour).sum(axis=2) < 30).sum() > 50, colour
    table = markdown(report)
    head = "| setting | network calls | wall time | FID | 95% interval | KID"
    assert table.splitlines()[0].startswith(head)
    assert len([line for line in table.splitlines() if line.startswith("| ddim")]) == 2


def test_ties_are_symmetric_and_name_other_settings(swept):
    rows = {r["setting"]: r for r in swept[0]["rows"]}
    for name, r in rows.items():
        assert name not in r["ties"]
        assert all(name in rows[other]["ties"] for other in r["ties"])


def test_a_second_sweep_reuses_the_reference_and_refuses_to_overwrite(swept, tmp_path):
    _, out = swept
    ref = str(out / "reference.safetensors")
    with pytest.raises(DtoolsError, match="already exists; pass --force"):
        sweep(SweepConfig(CKPT, ref, "ddim:5", str(out), n=8, subsets=10), log=lambda s: None)
    again = sweep(SweepConfig(CKPT, ref, "ddim:5", str(tmp_path), n=8, subsets=10), log=lambda s: None)
    assert not (tmp_path / "reference.safetensors").exists()
    assert again["reference"]["stats_file"] == ref
    assert again["rows"][0]["fid"] == pytest.approx(swept[0]["rows"][0]["fid"], rel=1e-9)


def test_bad_requests_fail_before_sampling(tmp_path):
    with pytest.raises(OptionError, match="at least 2 samples"):
        sweep(SweepConfig(CKPT, str(FIXTURE / "data"), "ddim:5", str(tmp_path), n=1))
    with pytest.raises(DtoolsError, match="no such file or folder"):
        sweep(SweepConfig(CKPT, str(tmp_path / "nothing"), "ddim:5", str(tmp_path)))
    (tmp_path / "file").write_text("")
    with pytest.raises(DtoolsError, match="is not a folder"):
        sweep(SweepConfig(CKPT, str(FIXTURE / "data"), "ddim:5", str(tmp_path / "file")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_checkpoint_without_a_sampler_is_refused(tmp_path):
    from dtools.checkpoint import save_model
    from dtools.dcgan import DCGANConfig, Generator

    cfg = DCGANConfig(image_size=8, latent_dim=4, base_channels=4)
    save_model(tmp_path / "g.safetensors", {"ema": Generator(cfg).state_dict()}, config=cfg.to_dict(),
               model_type="dcgan", meta={"step": 1})
    with pytest.raises(DtoolsError, match="holds a dcgan model: .* no sampler to sweep") as e:
        sweep(SweepConfig(tmp_path / "g.safetensors", str(FIXTURE / "data"), "ddim:5", str(tmp_path / "o")))
    assert "\n" not in str(e.value) and not (tmp_path / "o").exists()
