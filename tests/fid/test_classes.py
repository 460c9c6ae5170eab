"""Class-conditional scores (dtools.fid.classify): the conditioning accuracy of a pixel classifier
trained on REFERENCE, its held-out accuracy, per-class FID above the minimum and skipped below it,
labels aligned under --limit, and the cases that get a warning, an error or nothing.

The toy classes are separable by brightness: "dark" images around grey level 50, "bright" around 200,
"mid" (a rare class, too few for its FID) around 125, each pixel with noise. The Inception network is
faked (conftest.FakeInception), so a pipeline run takes a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dtools.errors import DtoolsError
from dtools.fid.classify import PER_CLASS_MIN, class_fid, fit_classifier, split
from dtools.fid.evaluate import FidConfig, evaluate
from dtools.fid.metrics import MetricsConfig, compute_metrics
from dtools.fid.stats import stats_from_features
from dtools.fid.weights import INCEPTION_SHA256
from dtools.images import numbered_png, read_images, save_png
from dtools.labels import write_labels

CLASSES = ("dark", "bright", "mid")
LEVEL = {"dark": 50, "bright": 200, "mid": 125}
BIG, RARE = PER_CLASS_MIN + 10, 10  # images of "dark" and "bright", and of "mid"


def toy_folder(folder: Path, drawn: list[str], asked: list[str] | None = None, classes=CLASSES,
               seed: int = 0, size: int = 8, label_order=None) -> Path:
    """Numbered grey PNGs, image i drawn as class drawn[i], labelled asked[i] (default: drawn[i])."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = [numbered_png(i, len(drawn)) for i in range(len(drawn))]
    for name, c in zip(names, drawn, strict=True):
        img = np.clip(rng.normal(LEVEL[c], 20, (size, size, 1)), 0, 255).astype(np.uint8)
        save_png(img, folder / name)
    asked = drawn if asked is None else asked
    entries = list(zip(names, [classes.index(c) for c in asked], strict=True))
    if label_order is not None:
        entries = [entries[i] for i in label_order]
    write_labels(folder, [n for n, _ in entries], [c for _, c in entries], classes)
    return folder


def interleaved(n_big: int, n_rare: int) -> list[str]:
    out = []
    for i in range(n_big):
        out += ["dark", "bright"] + (["mid"] if i < n_rare else [])
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("classes")
    ref = interleaved(BIG, RARE)  # 60 dark, 60 bright, 10 mid
    samples = interleaved(BIG - 5, RARE)
    swapped = [{"dark": "bright", "bright": "dark"}.get(c, c) for c in samples]
    folders = {
        # labels listed backwards in dataset.json: alignment must go by file name, not by position
        "ref": toy_folder(d / "ref", ref, label_order=range(len(ref) - 1, -1, -1)),
        "good": toy_folder(d / "good", samples, seed=1),
        "swapped": toy_folder(d / "swapped", samples, swapped, seed=1),
        "plain": d / "plain",
    }
    folders["plain"].mkdir()
    for f in sorted(folders["good"].glob("*.png")):
        (folders["plain"] / f.name).write_bytes(f.read_bytes())
    return {k: str(v) for k, v in folders.items()}


def _per_class(report: dict) -> dict[str, dict]:
    return {p["class"]: p for p in report["classes"]["per_class"]}


def test_correct_samples_score_one_and_per_class_fid_above_the_minimum(toy, fake_inception):
    report = evaluate(FidConfig(toy["ref"], toy["good"]), log=pytest.fail)
    assert report["conditioning_accuracy"] == 1.0
    c = report["classes"]
    assert c["names"] == list(CLASSES) and c["per_class_min"] == PER_CLASS_MIN
    clf = c["classifier"]
    assert clf["heldout_accuracy"] == 1.0 and clf["heldout_images"] == 12 + 12 + 2  # 20 % of each class
    assert clf["train_images"] == 130 - 26 and clf["image_shape"] == [8, 8, 1]
    per = _per_class(report)
    assert [p["samples"] for p in per.values()] == [BIG - 5, BIG - 5, RARE]
    assert [p["reference"] for p in per.values()] == [BIG, BIG, RARE]
    assert per["dark"]["fid"] is not None and per["bright"]["fid"] is not None
    assert per["mid"]["fid"] is None and c["skipped"] == ["mid"]  # 10 < 50 on both sides
    assert all(p["accuracy"] == 1.0 for p in per.values())
    assert list(report)[:3] == ["fid", "conditioning_accuracy", "classes"]
    assert sum("per-class FIDs come from as few as 55 images a side" in w for w in report["warnings"]) == 1


def test_swapped_labels_score_zero_and_a_worse_per_class_fid(toy, fake_inception):
    good = evaluate(FidConfig(toy["ref"], toy["good"]), log=pytest.fail)
    bad = evaluate(FidConfig(toy["ref"], toy["swapped"]), log=pytest.fail)
    per_good, per_bad = _per_class(good), _per_class(bad)
    assert per_bad["dark"]["accuracy"] == 0.0 and per_bad["bright"]["accuracy"] == 0.0
    assert per_bad["mid"]["accuracy"] == 1.0  # not swapped
    assert bad["conditioning_accuracy"] == pytest.approx(RARE / (2 * (BIG - 5) + RARE))
    assert bad["fid"] == pytest.approx(good["fid"])  # the same images: the whole-set FID cannot tell
    for c in ("dark", "bright"):
        assert per_bad[c]["fid"] > 10 * per_good[c]["fid"], c  # bright images scored as "dark"


def test_limit_keeps_the_labels_of_the_images_used(toy, fake_inception):
    report = evaluate(FidConfig(toy["ref"], toy["good"], limit=80), log=pytest.fail)
    per = _per_class(report)
    first80 = interleaved(BIG - 5, RARE)[:80]  # samples and reference share the interleaving up to here
    for c in CLASSES:
        assert per[c]["samples"] == first80.count(c), c
        assert per[c]["reference"] == interleaved(BIG, RARE)[:80].count(c), c
    assert report["conditioning_accuracy"] == 1.0  # misaligned labels would score about 1/3
    assert report["classes"]["classifier"]["train_images"] + report["classes"]["classifier"][
        "heldout_images"] == 80
    assert report["classes"]["skipped"] == ["dark", "bright", "mid"]  # 35 and 10 a class: under 50
    assert not any("per-class FIDs" in w for w in report["warnings"])  # none to warn about


def test_classes_matched_by_name_not_by_index(toy, tmp_path, fake_inception):
    drawn = interleaved(20, 0)
    order = ("bright", "dark", "mid")  # the samples' file numbers its classes otherwise
    folder = toy_folder(tmp_path / "s", drawn, classes=order, seed=3)
    report = evaluate(FidConfig(toy["ref"], str(folder)), log=pytest.fail)
    assert report["conditioning_accuracy"] == 1.0
    assert [p["class"] for p in report["classes"]["per_class"]] == ["dark", "bright"]  # reference order


@pytest.mark.parametrize("case", ["names differ", "reference unlabelled", "reference a .npy",
                                  "reference a stats file"])
def test_labelled_samples_without_matching_reference_labels_warn(toy, tmp_path, fake_inception, case):
    samples, ref = toy["good"], toy["ref"]
    if case == "names differ":
        other = ("dark", "light", "mid")
        samples = str(toy_folder(tmp_path / "s", ["dark", "bright"] * 3, ["dark", "light"] * 3, other))
        match = "class names differ: SAMPLES' 'light' not among REFERENCE's classes"
    elif case == "reference unlabelled":
        ref = toy["plain"]
        match = "has no dataset.json"
    elif case == "reference a .npy":
        ref = str(tmp_path / "ref.npy")
        np.save(ref, read_images([toy["ref"]]))
        match = "only an image folder has labels"
    else:
        ref = str(tmp_path / "ref.safetensors")
        evaluate(FidConfig(toy["ref"], save_stats=ref), log=lambda line: None)
        match = "a statistics file holds no labels"
    report = evaluate(FidConfig(ref, samples), log=pytest.fail)
    assert "classes" not in report and "conditioning_accuracy" not in report and "fid" in report
    assert sum(match in w for w in report["warnings"]) == 1, report["warnings"]


@pytest.mark.parametrize(("ref", "samples", "classes"), [
    ("ref", "plain", True),  # an unconditional model's samples against labelled data: silently none
    ("plain", "plain", True),
    ("ref", "good", False),  # --no-classes
])
def test_no_class_fields(toy, fake_inception, ref, samples, classes):
    report = evaluate(FidConfig(toy[ref], toy[samples], classes=classes), log=pytest.fail)
    assert "classes" not in report and "conditioning_accuracy" not in report
    assert not any("class" in w for w in report["warnings"])


def test_samples_of_another_size_are_one_line_error(toy, tmp_path, fake_inception):
    big = toy_folder(tmp_path / "big", ["dark", "bright"] * 3, size=16)
    with pytest.raises(DtoolsError, match=r"16x16, REFERENCE's images 8x8.*--no-classes") as e:
        evaluate(FidConfig(toy["ref"], str(big)), log=pytest.fail)
    assert "\n" not in str(e.value)
    report = evaluate(FidConfig(toy["ref"], str(big), classes=False), log=pytest.fail)  # FID alone: fine
    assert "fid" in report


# ------------------------------------------------------------------------------------------------
# The pieces


def test_class_fid_equals_torch_fidelity():
    g = torch.Generator().manual_seed(0)
    ref, gen = torch.randn(40, 64, generator=g), 0.8 * torch.randn(30, 64, generator=g) + 0.3
    want = compute_metrics(stats_from_features({"2048": ref}, "r", INCEPTION_SHA256),
                           stats_from_features({"2048": gen}, "s", INCEPTION_SHA256), MetricsConfig())["fid"]
    assert class_fid(ref.numpy(), gen.numpy()) == pytest.approx(want, rel=1e-5)


def test_split_is_stratified_and_fixed():
    labels = np.repeat([0, 1, 2], [50, 20, 1])
    train, test = split(labels)
    assert np.bincount(labels[test], minlength=3).tolist() == [10, 4, 0]  # a lone image trains
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(71))
    again = split(labels)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    capped, _ = split(labels, train_max=30)
    assert len(capped) == 30


def test_classifier_is_deterministic_and_learns_a_pixel_pattern():
    """Classes that differ only in which half of the image is bright (equal mean brightness)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = rng.normal(128, 40, (400, 6, 6, 1))
    x[y == 0, :3] += 30
    x[y == 1, 3:] += 30
    x = np.clip(x, 0, 255).astype(np.uint8)
    a, b = fit_classifier(x[:300], y[:300], 2), fit_classifier(x[:300], y[:300], 2)
    assert torch.equal(a.weight, b.weight)
    assert (a.predict(x[300:]) == y[300:]).mean() >= 0.95
