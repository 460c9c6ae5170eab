"""dtools.fid.audit (`dtools nn`): exact and mirrored copies of training images are flagged, other
images are not; duplicates in the training set, other sizes, --train-stats; the picture. The pixel
search needs no network; one test runs the Inception network on a handful of 8x8 images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dtools.errors import DtoolsError, OptionError
from dtools.fid.audit import NnConfig, audit, markdown, wilson
from dtools.fid.stats import Stats, save_stats
from dtools.images import read_source


@pytest.fixture(scope="module")
def emoji(tmp_path_factory) -> dict:
    """12 training emoji (8x8), and 8 other emoji that are not in the training set."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from conftest import make_tiny_pngs

    d = tmp_path_factory.mktemp("nn")
    make_tiny_pngs(d / "all", n=20)
    train = d / "train"
    train.mkdir()
    for i in range(12):
        (train / f"{i:06d}.png").write_bytes((d / "all" / f"{i:06d}.png").read_bytes())
    every = read_source(str(d / "all"), channels=3)
    np.save(d / "others.npy", every[12:])
    return {"dir": d, "train": train, "images": every[:12], "others": every[12:]}


def _run(emoji, samples: np.ndarray, name: str, **kw) -> dict:
    path = emoji["dir"] / f"{name}.npy"
    np.save(path, samples)
    return audit(NnConfig(str(emoji["train"]), str(path), **{"space": "pixel", **kw}), log=lambda s: None)


def test_exact_and_mirrored_copies_are_flagged(emoji):
    train, others = emoji["images"], emoji["others"]
    samples = np.concatenate([others[:4], train[[3, 7]], train[[10]][:, :, ::-1]])  # copies: 4, 5, 6
    report = _run(emoji, samples, "copies", top=7)
    assert report["copies"] == 3 and report["rate"] == pytest.approx(3 / 7)
    worst = report["worst"]
    assert [e["sample"] for e in worst[:3]] == [4, 5, 6] and all(e["copy"] for e in worst[:3])
    assert [e["pixel"]["nearest"] for e in worst[:3]] == [3, 7, 10]
    assert [e["pixel"]["mirrored"] for e in worst[:3]] == [False, False, True]
    assert all(e["pixel"]["distance"] == 0 and e["pixel"]["ratio"] == 0 for e in worst[:3])
    assert worst[0]["pixel"]["name"].endswith("000003.png")
    assert not any(e["copy"] for e in worst[3:])
    # without --mirror the mirrored copy is a new image (Gu et al.'s test exactly)
    assert _run(emoji, samples, "copies", mirror=False)["copies"] == 2


def test_images_not_in_the_training_set_are_not_flagged(emoji):
    report = _run(emoji, emoji["others"], "clean")
    assert report["copies"] == 0 and report["rate"] == 0
    assert min(e["pixel"]["ratio"] for e in report["worst"]) > 1 / 3
    assert report["rate_interval"][0] == 0 and 0 < report["rate_interval"][1] < 0.4
    assert "copies: 0 of 8 samples (0.0%" in markdown(report)


def test_a_duplicated_training_image_is_searched_once(emoji, tmp_path):
    train = emoji["images"]
    folder = tmp_path / "dup"
    folder.mkdir()
    for i, img in enumerate(np.concatenate([train, train[[5]]])):  # image 5 twice
        Image.fromarray(img).save(folder / f"{i:06d}.png")
    np.save(tmp_path / "s.npy", train[[5]])
    report = audit(NnConfig(str(folder), str(tmp_path / "s.npy"), space="pixel"), log=lambda s: None)
    assert report["train"] == {"source": str(folder), "images": 13, "distinct": 12}
    assert report["copies"] == 1  # the second copy of image 5 is not its second-nearest neighbour


def test_training_images_of_another_size_are_compared_at_the_samples_size(emoji, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for i, img in enumerate(emoji["images"]):
        Image.fromarray(img).resize((16, 16), Image.Resampling.NEAREST).save(big / f"{i:06d}.png")
    np.save(tmp_path / "s.npy", emoji["images"][[2]])
    report = audit(NnConfig(str(big), str(tmp_path / "s.npy"), space="pixel"), log=lambda s: None)
    assert report["resolution"] == [8, 8] and report["copies"] == 1
    assert report["worst"][0]["pixel"]["nearest"] == 2


def test_both_spaces_and_the_picture(emoji, net, weights, offline, tmp_path):
    """The one test that runs Inception: 4 training images, 2 samples (one a copy)."""
    from dtools.fid.evaluate import extract_features, open_images
    from dtools.fid.stats import stats_from_features

    train = tmp_path / "train4"
    train.mkdir()
    for i, img in enumerate(emoji["images"][:4]):
        Image.fromarray(img).save(train / f"{i:06d}.png")
    np.save(tmp_path / "s.npy", np.concatenate([emoji["images"][[1]], emoji["others"][:1]]))
    png = tmp_path / "pairs.png"
    cfg = NnConfig(str(train), str(tmp_path / "s.npy"), grid=str(png), top=2)
    report = audit(cfg, log=lambda s: None)
    first = report["worst"][0]
    assert first["sample"] == 0 and first["copy"] and first["pixel"]["nearest"] == 1
    assert first["inception"]["nearest"] == 1 and first["inception"]["distance"] == pytest.approx(0, abs=1e-4)
    assert report["spaces"]["inception"]["copies"] >= 1 and report["grid"] == str(png)
    picture = np.asarray(Image.open(png))
    assert picture.shape[0] == 2 + 2 * (64 + 2)  # 2 rows of 8x8 images enlarged 8x, 2 px padding
    json.dumps(report)  # the --json report is plain JSON
    # --train-stats: TRAIN's features from a statistics file instead of the network
    feats = stats_from_features(extract_features(net, open_images(str(train))), str(train), weights.sha256)
    save_stats(tmp_path / "train.safetensors", feats, with_features=True)
    cfg = NnConfig(str(train), str(tmp_path / "s.npy"), space="inception",
                   train_stats=str(tmp_path / "train.safetensors"), top=2)
    again = audit(cfg, log=lambda s: None)
    assert again["worst"][0]["inception"] == pytest.approx(first["inception"])


def test_train_stats_of_other_images_are_refused(emoji, tmp_path):
    import torch

    other = Stats(np.zeros(2048, np.float32), np.eye(2048), 5, "x", "0" * 64, torch.zeros(5, 2048))
    save_stats(tmp_path / "five.safetensors", other, with_features=True)
    np.save(tmp_path / "s.npy", emoji["others"])
    five = str(tmp_path / "five.safetensors")
    cfg = NnConfig(str(emoji["train"]), str(tmp_path / "s.npy"), train_stats=five)
    with pytest.raises(DtoolsError, match="features of 5 images, .* has 12"):
        audit(cfg, log=lambda s: None)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"space": "pixels"}, "--space"),
        ({"threshold": 0.0}, "--threshold"),
        ({"top": 0}, "--top"),
        ({"train_stats": "t.safetensors", "space": "pixel"}, "--train-stats"),
    ],
)
def test_bad_options_are_usage_errors(kw, match):
    with pytest.raises(OptionError, match=match):
        audit(NnConfig("a", "b", **kw))


def test_refusals_before_any_work(tmp_path):
    with pytest.raises(DtoolsError, match="only one of TRAIN and SAMPLES"):
        audit(NnConfig("-", "-"))
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DtoolsError, match="already exists"):
        audit(NnConfig("a", "b", grid=str(tmp_path / "x.png")))
    with pytest.raises(DtoolsError, match="ending in .png"):
        audit(NnConfig("a", "b", grid=str(tmp_path / "x.jpg")))


def test_wilson_interval():
    assert wilson(0, 100)[0] == 0 and wilson(0, 100)[1] == pytest.approx(0.037, abs=1e-3)
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.404, abs=1e-3) and high == pytest.approx(0.596, abs=1e-3)
