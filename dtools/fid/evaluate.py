"""The `dtools fid` pipeline: sources in (image folders, .npy batches, stdin, statistics files),
one report out.

Cheap checks come first: the request itself, then every statistics file is read and every image
source opened before the weights are resolved and any network runs. Then the features of each image
source (with a progress bar), their statistics, the reference statistics saved when asked, the
metrics, and a report whose keys are those of `dtools fid --json`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from dtools.errors import DtoolsError, OptionError
from dtools.fid.classify import ClassInputs, class_inputs, class_scores, per_class_warning
from dtools.fid.inception import InceptionV3
from dtools.fid.interval import SUBSETS, FixedReferenceFid, fid_interval
from dtools.fid.metrics import MetricsConfig, bias_warning, check_stats, compute_metrics
from dtools.fid.stats import Stats, is_stats_file, load_stats, save_stats, stats_from_features
from dtools.fid.weights import INCEPTION_SHA256, Weights, find_weights, load_inception
from dtools.fileio import check_writable, is_stdio
from dtools.images import ImageSource, open_source
from dtools.progress import progress_bar, status
from dtools.runtime import resolve_device


@dataclass(frozen=True)
class FidConfig:
    """What `dtools fid` is asked to do (one-to-one with its options, less --json)."""

    reference: str
    samples: str | None = None
    kid: bool = False
    prc: bool = False
    isc: bool = False
    interval: bool = False
    save_stats: str | None = None
    weights: str | None = None
    batch_size: int = 64
    device: str = "auto"
    force: bool = False
    limit: int | None = None  # only the first N images of each image source (not of a statistics file)
    classes: bool = True  # class scores when both folders are labelled (dtools.fid.classify)

    @property
    def metrics(self) -> MetricsConfig:
        return MetricsConfig(kid=self.kid, prc=self.prc, isc=self.isc)

    @property
    def sides(self) -> dict[str, str]:
        """{"reference": source[, "samples": source]}, in that order."""
        if self.samples is None:
            return {"reference": self.reference}
        return {"reference": self.reference, "samples": self.samples}


def check_request(cfg: FidConfig) -> None:
    """Refuse what needs no file read: a missing side, two stdins, a bad --save-stats, --isc without
    sample images. An existing --save-stats file is refused now, not after minutes of features."""
    if cfg.samples is None and cfg.save_stats is None:
        raise OptionError("SAMPLES", "give REFERENCE and SAMPLES, or REFERENCE alone with --save-stats FILE")
    if cfg.samples is not None and is_stdio(cfg.reference) and is_stdio(cfg.samples):
        raise DtoolsError("only one of REFERENCE and SAMPLES can be '-' (stdin)")
    if cfg.save_stats is not None:
        if is_stdio(cfg.save_stats) or not cfg.save_stats.lower().endswith(".safetensors"):
            raise DtoolsError(f"--save-stats {cfg.save_stats}: give a file name ending in .safetensors")
        if is_stats_file(cfg.reference):
            raise DtoolsError(f"{cfg.reference} is already a statistics file; --save-stats needs images")
        check_writable(cfg.save_stats, cfg.force)
    if cfg.isc and cfg.samples is None:
        raise DtoolsError("--isc scores SAMPLES; give them (the Inception Score has no reference)")
    if cfg.interval and cfg.samples is None:
        raise DtoolsError("--interval is over the samples; give SAMPLES")
    if cfg.isc and is_stats_file(cfg.samples):
        msg = f"{cfg.samples}: the Inception Score needs the sample images, not a statistics file"
        raise DtoolsError(msg)


def open_images(source: str, limit: int | None = None) -> ImageSource:
    """An image folder (recursive, sorted), a ``.npy`` uint8 batch [N,H,W,C] or ``-`` (stdin), as RGB;
    with `limit`, only its first `limit` images (a folder's other files are never opened).

    Grey images are repeated to RGB; transparency is composited onto white (as everywhere in dtools).
    Images of a folder may differ in size: each is resized to 299x299 by the network.
    """
    return open_source(source, channels=3, limit=limit, empty_hint=" in this folder")


@torch.inference_mode()
def extract_features(
    net: InceptionV3,
    images: ImageSource,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the network over every image: {"2048": (N, 2048) float32, ["logits_unbiased": (N, 1008)]}.

    ``on_batch(n)`` is called after each batch with the number of images it held (progress bars).
    """
    if batch_size < 1:
        raise DtoolsError(f"--batch-size must be at least 1, got {batch_size}")
    device = torch.device(device)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in net.features_list}
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would move FID by more than its rounding
    try:
        for batch in images.batches(batch_size):  # (B, H, W, 3) uint8
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(device)  # (B, 3, H, W)
            for name, feats in zip(net.features_list, net(x), strict=True):
                out[name].append(feats.to("cpu", torch.float32))
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    features = {name: torch.cat(parts) for name, parts in out.items()}
    bad = ~torch.isfinite(features["2048"]).all(dim=1)
    if bad.any():
        raise DtoolsError(f"{images.name}: the network gave NaN features for {int(bad.sum())} images")
    return features


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def evaluate(cfg: FidConfig, log: Callable[[str], None] = _log) -> dict:
    """Score cfg.samples against cfg.reference (or only save the reference statistics).

    ``log`` gets the lines a user should see as they happen (weights converted, statistics written);
    the warnings are in the report's "warnings", for the caller to show.
    """
    check_request(cfg)
    metrics = cfg.metrics
    stats: dict[str, Stats] = {}  # filled in this order: statistics files first, then image sources
    image_sets: dict[str, ImageSource] = {}
    for side, source in cfg.sides.items():
        if is_stats_file(source):
            stats[side] = load_stats(source)
            check_stats(stats[side], metrics)
        else:
            image_sets[side] = open_images(source, cfg.limit)
    if cfg.interval and "samples" in stats:
        _check_interval_input(stats["samples"])  # before minutes of features
    notes: list[str] = []
    classes: ClassInputs | None = None
    if cfg.classes and cfg.samples is not None:  # labels and pixels read (and checked) before the features
        classes, class_notes = class_inputs(cfg.reference, cfg.samples, image_sets)
        notes += class_notes
    weights_sha = next(iter(stats.values())).weights_sha256 if stats else None
    if image_sets:  # two statistics files need no network at all
        computed, w = _image_stats(cfg, image_sets, stats.values(), log)
        stats.update(computed)
        notes += w.notes
        weights_sha = w.sha256

    if cfg.save_stats is not None:
        save_stats(cfg.save_stats, stats["reference"], with_features=cfg.kid or cfg.prc, force=cfg.force)
        log(f"wrote statistics of {stats['reference'].count} images to {cfg.save_stats}")

    result = {}
    if "samples" in stats:
        with status("computing the scores (FID: a 2048x2048 matrix square root)"):
            result = compute_metrics(stats["reference"], stats["samples"], metrics)
        if cfg.interval:
            result["fid_interval"] = _interval(stats["reference"], stats["samples"])
        if classes is not None:
            with status("class scores: a pixel classifier trained on REFERENCE, FID of each class"):
                result.update(class_scores(classes, stats["reference"].features, stats["samples"].features))
            notes += [w] if (w := per_class_warning(result)) else []
    warning = bias_warning(s.count for s in stats.values()) if result else None
    notes += [warning] if warning else []
    return {
        **result,
        **{side: _side(s) for side, s in stats.items()},
        "weights_sha256": weights_sha,
        "standard_weights": weights_sha == INCEPTION_SHA256,
        "saved_stats": cfg.save_stats,
        "warnings": notes,
    }


def _image_stats(
    cfg: FidConfig, image_sets: dict[str, ImageSource], stats_files: Iterable[Stats],
    log: Callable[[str], None],
) -> tuple[dict[str, Stats], Weights]:
    """The weights (the statistics files must have been made with them) and the statistics of each
    image source, its features extracted under a progress bar."""
    device = resolve_device(cfg.device)
    w = find_weights(cfg.weights)
    if w.converted:
        log(f"Inception weights converted and verified: {w.origin}")
    for s in stats_files:
        check_stats(s, cfg.metrics, w.sha256)
    net = load_inception(w, device, logits=cfg.isc)
    computed = {}
    for side, images in image_sets.items():
        label = f"Inception features of {side} {images.name}"
        with progress_bar(_literal(label), images.count) as bar:
            feats = extract_features(net, images, cfg.batch_size, device, on_batch=bar.advance)
        computed[side] = stats_from_features(feats, images.name, w.sha256)
    return computed, w


def _check_interval_input(samples: Stats) -> None:
    if samples.features is None:
        raise DtoolsError(f"{samples.from_file}: --interval needs the samples' features; give the images, "
                          "or a statistics file saved with --kid")


def _interval(reference: Stats, samples: Stats) -> dict:
    """--interval: FID's 95% interval from half-subsets of the samples (dtools.fid.interval)."""
    _check_interval_input(samples)
    with status(f"FID's interval: {SUBSETS} half-subsets of the samples"):
        feats = None if reference.features is None else reference.features.numpy()
        iv = fid_interval(FixedReferenceFid(reference.mu, reference.sigma, feats), samples.features.numpy())
    return iv.to_dict()


def _literal(text: str) -> str:
    """`text` as a rich format string that shows it unchanged (a path may hold braces)."""
    return text.replace("{", "{{").replace("}", "}}")


def _side(s: Stats) -> dict:
    return {"source": s.source, "images": s.count, "stats_file": s.from_file}
