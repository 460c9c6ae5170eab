"""Class-conditional samples: does a model draw the class it was asked for, and how good is each class?

Both REFERENCE and SAMPLES are image folders with a `dataset.json` (dtools/labels.py): the reference's
labels are the truth, the samples' the class each one was asked for (`dtools sample -o DIR --class`).

**Conditioning accuracy.** A multinomial logistic regression on pixels (each pixel standardised over
the training images, L2-regularised, full-batch L-BFGS in float32 on the CPU; deterministic: zero
start, fixed split seed) is trained on REFERENCE's images and labels, and the share of SAMPLES it
assigns to their requested class is reported. It is trained on a stratified 80 % of the reference
(at most `TRAIN_MAX` images) and tested on the other 20 %: that held-out accuracy is the ceiling the
samples' accuracy can be expected to reach (about 0.9 for MNIST digits; far less on natural images,
where a pixel classifier is weak, so read the samples' score against it). Images are compared at the
reference's size and channels: samples of another size are an error (channels are converted).

**Per-class FID.** Each class's samples against that class's reference images, from the Inception
features already extracted for the whole sets (sliced by label), when both sides have at least
`PER_CLASS_MIN` images of the class; the others are listed as skipped. A class has far fewer images
than a whole set, so its FID is biased upwards much more (docs/fid.md): compare per-class scores
only between runs with the same counts per class. Each is scored without a 2048x2048 matrix square
root (`interval.FixedReferenceFid`, the Gram-matrix route), so ten classes cost seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dtools.errors import DtoolsError
from dtools.fid.interval import FixedReferenceFid
from dtools.images import ImageSource, load_image
from dtools.labels import LABELS_FILE, Labels, read_labels

PER_CLASS_MIN = 50  # images of a class on each side for its FID
HOLDOUT = 0.2  # share of each reference class held out to test the classifier
TRAIN_MAX = 10_000  # reference images the classifier trains on, at most (seconds on 2 CPU cores)
SEED = 0  # the split (and the subset when the reference has more than TRAIN_MAX training images)
L2 = 1e-3  # the penalty L2/2 |W|^2 added to the mean cross-entropy
MAX_ITER = 100  # L-BFGS iterations
CLASSIFIER = "logistic regression on standardised pixels (L2, L-BFGS)"


@dataclass
class ClassInputs:
    """Both sides' labels (sample labels as reference class indices), aligned with their images, and
    their pixels at the reference's size and channels."""

    classes: tuple[str, ...]  # the reference's class names
    ref_labels: np.ndarray  # int64 [N_ref]
    sample_labels: np.ndarray  # int64 [N_samples], indices into `classes`
    ref_pixels: np.ndarray  # uint8 [N_ref, H, W, C]
    sample_pixels: np.ndarray  # uint8 [N_samples, H, W, C]


def class_inputs(
    reference: str, samples: str, image_sets: dict[str, ImageSource]
) -> tuple[ClassInputs | None, list[str]]:
    """The inputs of the class scores, or None and the warnings saying why there are none.

    Only SAMPLES' labels ask for class scores: unlabelled samples get none, silently (an unconditional
    model scored against a labelled data set). Labelled samples against an unlabelled REFERENCE (a
    folder without dataset.json, a .npy, stdin or a statistics file), or with class names the
    reference lacks, get a warning and no class scores; the FID stands.
    """
    src = image_sets.get("samples")
    sample_lab = read_labels(samples) if src is not None and src.files is not None else None
    if sample_lab is None:
        return None, []
    ref_src = image_sets.get("reference")
    ref_lab = read_labels(reference) if ref_src is not None and ref_src.files is not None else None
    if ref_lab is None:
        why = ("a statistics file holds no labels" if ref_src is None else
               "only an image folder has labels" if ref_src.files is None else f"it has no {LABELS_FILE}")
        return None, [f"{samples} has class labels but REFERENCE {reference} has none ({why}): "
                      "no class scores (the classifier learns from REFERENCE's labels)"]
    missing = [c for c in sample_lab.classes if c not in ref_lab.classes]
    if missing:
        return None, [f"class names differ: SAMPLES' {_names(missing)} not among REFERENCE's classes "
                      f"{_names(ref_lab.classes)}: no class scores"]
    to_ref = np.array([ref_lab.classes.index(c) for c in sample_lab.classes], dtype=np.int64)
    ref_labels = _aligned(ref_lab, ref_src, reference)
    sample_labels = to_ref[_aligned(sample_lab, src, samples)]
    first = load_image(ref_src.files[0])  # grey stays grey, anything else RGB: the reference decides
    ref_pixels = _pixels(ref_src, first.shape, "REFERENCE")
    sample_pixels = _pixels(src, first.shape, "SAMPLES")
    notes = []
    absent = sorted(set(sample_labels.tolist()) - set(ref_labels.tolist()))
    if absent:
        notes.append(f"REFERENCE has no images of class {_names([ref_lab.classes[c] for c in absent])}: "
                     "the classifier cannot recognise them, so their samples count as wrong")
    return ClassInputs(ref_lab.classes, ref_labels, sample_labels, ref_pixels, sample_pixels), notes


def _aligned(labels: Labels, src: ImageSource, folder: str) -> np.ndarray:
    """The label of each image the source holds (its files: the same list, --limit included, that the
    Inception features are computed from, so labels and features line up by construction)."""
    return labels.for_files(src.files, folder)


def _pixels(src: ImageSource, shape: tuple[int, ...], side: str) -> np.ndarray:
    h, w, c = shape
    out = np.empty((src.count, h, w, c), dtype=np.uint8)
    for i, f in enumerate(src.files):
        im = load_image(f, c)
        if im.shape != out.shape[1:]:
            raise DtoolsError(
                f"{f} is {im.shape[1]}x{im.shape[0]}, REFERENCE's images {w}x{h}: the class scores compare "
                f"{side} pixels at one size; resize with `dtools prep --size {w}`, or pass --no-classes"
            )
        out[i] = im
    return out


def _names(names) -> str:
    names = list(names)
    return ", ".join(repr(n) for n in names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


# ------------------------------------------------------------------------------------------------
# The classifier


@dataclass
class PixelClassifier:
    """A fitted multinomial logistic regression on standardised pixels."""

    mean: torch.Tensor  # (D,)
    scale: torch.Tensor  # (D,)
    weight: torch.Tensor  # (D, K)
    bias: torch.Tensor  # (K,)

    def predict(self, pixels: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """The most likely class of each uint8 image [N, H, W, C], int64 [N]."""
        out = []
        with torch.no_grad():
            for i in range(0, len(pixels), chunk):
                z = (_flat(pixels[i : i + chunk]) - self.mean) / self.scale
                out.append((z @ self.weight + self.bias).argmax(dim=1))
        return torch.cat(out).numpy() if out else np.empty(0, dtype=np.int64)


def _flat(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels)).reshape(len(pixels), -1).to(torch.float32) / 255.0


def fit_classifier(
    pixels: np.ndarray, labels: np.ndarray, n_classes: int, l2: float = L2, max_iter: int = MAX_ITER
) -> PixelClassifier:
    """Fit the logistic regression on uint8 images [N, H, W, C] with class indices [N]."""
    x = _flat(pixels)
    mean = x.mean(dim=0)
    std = x.std(dim=0) if len(x) > 1 else torch.ones_like(mean)
    scale = torch.where(std > 1e-3, std, torch.ones_like(std))  # constant pixels: no gradient, weight 0
    z = (x - mean) / scale
    del x
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    w = torch.zeros(z.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=10,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def loss_fn() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(loss_fn)
    return PixelClassifier(mean, scale, w.detach(), b.detach())


def split(labels: np.ndarray, holdout: float = HOLDOUT, train_max: int = TRAIN_MAX,
          seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held out), stratified: round(holdout * n) of each class's n images are held out,
    leaving at least one to train on; then at most `train_max` training images, drawn at random."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(int(round(holdout * len(idx))), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    if len(train_idx) > train_max:
        train_idx = rng.choice(train_idx, train_max, replace=False)
    return np.sort(train_idx), np.sort(test_idx)


# ------------------------------------------------------------------------------------------------
# The scores


def class_scores(inputs: ClassInputs, ref_features: torch.Tensor, sample_features: torch.Tensor,
                 min_images: int = PER_CLASS_MIN) -> dict:
    """The report's class fields: the conditioning accuracy, the classifier's held-out accuracy, and
    each requested class's count, accuracy and FID (None when a side has fewer than `min_images`)."""
    train, test = split(inputs.ref_labels)
    clf = fit_classifier(inputs.ref_pixels[train], inputs.ref_labels[train], len(inputs.classes))
    heldout = None
    if len(test):
        heldout = float((clf.predict(inputs.ref_pixels[test]) == inputs.ref_labels[test]).mean())
    correct = clf.predict(inputs.sample_pixels) == inputs.sample_labels
    ref_counts = np.bincount(inputs.ref_labels, minlength=len(inputs.classes))
    per_class = []
    for c in np.unique(inputs.sample_labels):  # the classes asked for, in class order
        mine = inputs.sample_labels == c
        n_ref, n_s = int(ref_counts[c]), int(mine.sum())
        fid = None
        if min(n_ref, n_s) >= min_images:
            feats_r = ref_features[torch.from_numpy(inputs.ref_labels == c)].numpy()
            feats_s = sample_features[torch.from_numpy(mine)].numpy()
            fid = class_fid(feats_r, feats_s)
        per_class.append({"class": inputs.classes[c], "samples": n_s, "reference": n_ref,
                          "accuracy": float(correct[mine].mean()), "fid": fid})
    return {
        "conditioning_accuracy": float(correct.mean()),
        "classes": {
            "names": list(inputs.classes),
            "classifier": {
                "method": CLASSIFIER,
                "image_shape": list(inputs.ref_pixels.shape[1:]),
                "train_images": int(len(train)),
                "heldout_images": int(len(test)),
                "heldout_accuracy": heldout,
            },
            "per_class_min": min_images,
            "per_class": per_class,
            "skipped": [p["class"] for p in per_class if p["fid"] is None],
        },
    }


def per_class_warning(scores: dict) -> str | None:
    """The bias caveat of per-class FIDs, when there are any."""
    scored = [p for p in scores["classes"]["per_class"] if p["fid"] is not None]
    if not scored:
        return None
    least = min(min(p["samples"], p["reference"]) for p in scored)
    return (f"per-class FIDs come from as few as {least:,} images a side, and are biased upwards far more "
            "than the whole set's: compare them only between runs with the same counts per class")


def class_fid(ref_features: np.ndarray, sample_features: np.ndarray) -> float:
    """FID of one class's sample features against its reference features (torch-fidelity's value to
    about 1e-6 relative, without its 2048x2048 matrix square root)."""
    x = np.asarray(ref_features, dtype=np.float64)
    mu = x.mean(axis=0)
    sigma = np.cov(x, rowvar=False)
    return FixedReferenceFid(mu, sigma, x).fid(sample_features)
