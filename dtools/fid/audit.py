"""The memorisation audit behind `dtools nn`: did the model copy its training images?

For every sample, its nearest and second-nearest training images in pixel space and in the Inception
feature space of FID, and the ratio of the two distances. A sample counts as a copy when, in pixel
space, its nearest training image is less than a third as far as the second nearest:
||x − NN1||₂ / ||x − NN2||₂ < 1/3. That is the test of Gu et al. 2023 ("On Memorization in Diffusion
Models", TMLR; their code, sail-sg/DiffMemorize `mem_ratio.py`: ℓ2 over all pixels, top-2 training
images, ratio < 1/3), also cited to Yoon et al. 2023 ("Diffusion Probabilistic Models Generalize when
They Fail to Memorize") and descending from Carlini et al. 2023 ("Extracting Training Data from
Diffusion Models"); docs/nn.md says what was checked. Images are compared at the samples'
resolution (training images of another size are resized to it, as `dtools prep` resizes), as
root-mean-square differences of [0, 1] pixel values.

Exact duplicates among the training images are searched once (a copy of a duplicated image would
otherwise have a second-nearest distance of 0). With `mirror` (the default, as `dtools train` flips),
a mirrored copy counts as a copy, and mirror-image pairs in the training set count as duplicates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dtools.errors import DtoolsError, OptionError
from dtools.fid.evaluate import extract_features, open_images
from dtools.fid.metrics import MetricsConfig, check_stats
from dtools.fid.neighbours import Neighbours, distinct, mirror, nearest_two, pixel_vectors
from dtools.fid.stats import Stats, load_stats
from dtools.fid.weights import find_weights, load_inception
from dtools.fileio import check_writable, is_stdio
from dtools.grid import make_grid
from dtools.images import ImageSource, save_png
from dtools.progress import log as log_line
from dtools.progress import progress_bar
from dtools.runtime import resolve_device

THRESHOLD = 1 / 3  # Gu et al. 2023's ratio threshold
SPACES = ("both", "pixel", "inception")
CRITERION = "||x - NN1|| / ||x - NN2|| < threshold in pixel space (Gu et al. 2023)"
GRID_MIN_SIDE = 64  # images in the picture are enlarged (nearest) to at least this many pixels


@dataclass(frozen=True)
class NnConfig:
    """What `dtools nn` is asked to do (one field per option, less --json)."""

    train: str
    samples: str
    grid: str | None = None
    top: int = 16
    threshold: float = THRESHOLD
    space: str = "both"
    mirror: bool = True
    train_stats: str | None = None  # TRAIN's statistics file with features: no Inception run on TRAIN
    weights: str | None = None
    batch_size: int = 64
    device: str = "auto"
    force: bool = False

    @property
    def pixel(self) -> bool:
        return self.space in ("both", "pixel")

    @property
    def inception(self) -> bool:
        return self.space in ("both", "inception")


def check_request(cfg: NnConfig) -> None:
    """What needs no image: the option values, two stdins, the picture's file name."""
    if cfg.space not in SPACES:
        raise OptionError("--space", f"{cfg.space!r} is not one of {', '.join(SPACES)}")
    if not 0 < cfg.threshold <= 1:
        raise OptionError("--threshold", f"must lie in (0, 1], got {cfg.threshold}")
    if cfg.top < 1:
        raise OptionError("--top", f"must be at least 1, got {cfg.top}")
    if is_stdio(cfg.train) and is_stdio(cfg.samples):
        raise DtoolsError("only one of TRAIN and SAMPLES can be '-' (stdin)")
    if cfg.train_stats is not None and not cfg.inception:
        raise OptionError("--train-stats", "gives Inception features; it needs --space inception or both")
    if cfg.grid is not None:
        if is_stdio(cfg.grid) or not cfg.grid.lower().endswith(".png"):
            raise DtoolsError(f"-o {cfg.grid}: give a file name ending in .png")
        check_writable(cfg.grid, cfg.force)


def _resized(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] at size (h, w): unchanged if it is already, else resized as `dtools prep` does."""
    if img.shape[:2] == size:
        return img
    from PIL import Image

    pil = Image.fromarray(img).resize((size[1], size[0]), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(pil, dtype=np.uint8)


def read_pixels(samples: ImageSource, train: ImageSource) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as uint8 [N, H, W, 3] at the samples' size (which they must share)."""
    shots = list(samples.images())
    size = shots[0].shape[:2]
    odd = next((i for i, im in enumerate(shots) if im.shape[:2] != size), None)
    if odd is not None:
        raise DtoolsError(f"{samples.name}: samples differ in size (image {odd} is not {size[1]}x{size[0]}); "
                          "a model's samples share one size")
    return np.stack(shots), np.stack([_resized(im, size) for im in train.images()])


def train_names(train: ImageSource) -> list[str]:
    if train.files is not None:
        return [str(f) for f in train.files]
    return [f"{train.name}[{i}]" for i in range(train.count)]


def read_train_stats(cfg: NnConfig, train: ImageSource, log: Callable[[str], None]) -> Stats | None:
    """--train-stats: TRAIN's features from a statistics file, checked against TRAIN."""
    if cfg.train_stats is None:
        return None
    stats = load_stats(cfg.train_stats)
    if stats.features is None:
        raise DtoolsError(f"{cfg.train_stats} holds no features; make it with dtools fid TRAIN --save-stats "
                          "FILE --kid (or use a dtools sweep reference.safetensors)")
    if stats.count != train.count:
        raise DtoolsError(f"{cfg.train_stats} holds features of {stats.count} images, {train.name} has "
                          f"{train.count}: not the same images")
    if Path(stats.source).resolve() != Path(train.name).resolve():
        log(f"Warning: {cfg.train_stats} was made from {stats.source}, not {train.name}; its features are "
            "used in the order of the images in it")
    return stats


def _features(cfg: NnConfig, sources: dict[str, ImageSource], train_stats: Stats | None,
              log: Callable[[str], None]) -> dict:
    """Inception features of each source; TRAIN's from --train-stats when given (same weights)."""
    device = resolve_device(cfg.device)
    w = find_weights(cfg.weights)
    if w.converted:
        log(f"Inception weights converted and verified: {w.origin}")
    for note in w.notes:
        log(f"Warning: {note}")
    out = {}
    if train_stats is not None:
        check_stats(train_stats, MetricsConfig(), w.sha256)
        out["training images"] = train_stats.features
        sources = {side: images for side, images in sources.items() if side != "training images"}
    net = load_inception(w, device)
    for side, images in sources.items():
        with progress_bar(f"Inception features of {side}", images.count) as bar:
            out[side] = extract_features(net, images, cfg.batch_size, device, on_batch=bar.advance)["2048"]
    return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate k/n (95% for z = 1.96)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def audit(cfg: NnConfig, log: Callable[[str], None] = log_line) -> dict:
    """Search every sample's nearest training images; the report of `dtools nn --json`."""
    check_request(cfg)
    samples, train = open_images(cfg.samples), open_images(cfg.train)
    train_stats = read_train_stats(cfg, train, log)
    sample_px, train_px = read_pixels(samples, train)
    keep = distinct(train_px, cfg.mirror)  # (M,) indices of distinct training images
    device = resolve_device(cfg.device)
    found: dict[str, Neighbours] = {}
    if cfg.pixel:
        kept = train_px[keep]
        flipped = pixel_vectors(mirror(kept)) if cfg.mirror else None
        found["pixel"] = nearest_two(pixel_vectors(sample_px), pixel_vectors(kept), flipped, device)
    if cfg.inception:
        feats = _features(cfg, {"samples": samples, "training images": train}, train_stats, log)
        found["inception"] = nearest_two(feats["samples"], feats["training images"][torch.from_numpy(keep)],
                                         None, device)
    for nn in found.values():
        nn.index = keep[nn.index]  # back to indices into TRAIN
    report = _report(cfg, found, samples, train, len(keep), sample_px.shape[1:3])
    if cfg.grid is not None:
        picture = pairs_picture(report["worst"], sample_px, train_px, cfg.pixel, cfg.inception)
        save_png(picture, cfg.grid, cfg.force)
        report["grid"] = cfg.grid
        log(f"wrote {cfg.grid} ({len(report['worst'])} closest samples and their nearest training images)")
    return report


def _report(cfg: NnConfig, found: dict[str, Neighbours], samples: ImageSource, train: ImageSource,
            n_distinct: int, size: tuple[int, int]) -> dict:
    headline = "pixel" if cfg.pixel else "inception"
    ratios = {space: nn.ratio for space, nn in found.items()}
    copies = ratios[headline] < cfg.threshold
    n = samples.count
    rates = {}
    for space, r in ratios.items():
        k = int((r < cfg.threshold).sum())
        low, high = wilson(k, n)
        rates[space] = {"copies": k, "rate": k / n, "rate_low": low, "rate_high": high,
                        "median_distance": float(np.median(found[space].distance[:, 0])),
                        "median_ratio": float(np.median(r))}
    order = np.lexsort((found[headline].distance[:, 0], ratios[headline]))[: cfg.top]
    names = train_names(train)
    worst = []
    for i in order:
        entry = {"sample": int(i), "copy": bool(copies[i])}
        for space, nn in found.items():
            j, j2 = (int(v) for v in nn.index[i])
            entry[space] = {"nearest": j, "name": names[j], "distance": float(nn.distance[i, 0]),
                            "second": j2, "second_distance": float(nn.distance[i, 1]),
                            "ratio": float(ratios[space][i]), "mirrored": bool(nn.mirrored[i, 0])}
        worst.append(entry)
    return {
        "criterion": CRITERION if cfg.pixel else "the same ratio test on Inception features",
        "threshold": cfg.threshold,
        "space": headline,
        "copies": rates[headline]["copies"],
        "rate": rates[headline]["rate"],
        "rate_interval": [rates[headline]["rate_low"], rates[headline]["rate_high"]],
        "spaces": rates,
        "samples": {"source": samples.name, "images": n},
        "train": {"source": train.name, "images": train.count, "distinct": n_distinct},
        "resolution": [int(size[0]), int(size[1])],
        "mirror": cfg.mirror,
        "worst": worst,
        "grid": None,
    }


def pairs_picture(worst: list[dict], sample_px: np.ndarray, train_px: np.ndarray, pixel: bool,
                  inception: bool) -> np.ndarray:
    """One row per listed sample: the sample, its nearest training image in pixels (mirrored when that
    matched), its nearest in Inception space; a row label `#i ratio` (+ `copy`)."""
    tiles, labels = [], []
    for e in worst:
        tiles.append(sample_px[e["sample"]])
        if pixel:
            match = train_px[e["pixel"]["nearest"]]
            tiles.append(match[:, ::-1] if e["pixel"]["mirrored"] else match)
        if inception:
            tiles.append(train_px[e["inception"]["nearest"]])
        space = "pixel" if pixel else "inception"
        labels.append(f"#{e['sample']} r={e[space]['ratio']:.2f}{' copy' if e['copy'] else ''}")
    scale = max(1, math.ceil(GRID_MIN_SIDE / sample_px.shape[1]))
    return make_grid(np.stack(tiles), nrow=1 + pixel + inception, scale=scale, labels=labels)


def markdown(report: dict) -> str:
    """The report as a summary line and a markdown table of the closest samples."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    low, high = report["rate_interval"]
    lines = [
        f"copies: {report['copies']} of {report['samples']['images']} samples "
        f"({pct(report['rate'])}, 95% interval {pct(low)}-{pct(high)}); "
        f"test: nearest/second-nearest {report['space']} distance < {report['threshold']:.3g} "
        f"against {report['train']['distinct']} distinct training images",
        "",
    ]
    spaces = [s for s in ("pixel", "inception") if s in report["spaces"]]
    head = ["sample", "copy"]
    for s in spaces:
        head += [f"nearest ({s})", "distance", "ratio"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in report["worst"]:
        row = [str(e["sample"]), "yes" if e["copy"] else ""]
        for s in spaces:
            m = e[s]
            name = m["name"] + (" (mirrored)" if m["mirrored"] else "")
            row += [name, f"{m['distance']:.4g}", f"{m['ratio']:.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
