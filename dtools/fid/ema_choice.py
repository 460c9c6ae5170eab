"""The EMA length chosen by FID, the job behind `dtools ema RUN --choose REF`: for each candidate width,
make the run's post-hoc EMA (dtools.posthoc), sample it as `dtools sample` would (its default sampler
and guidance: autoguided by RUN/guide.safetensors when the run kept one), score the samples against REF,
and keep the best.

Every candidate draws image i from the same seed, and the scores are compared on the same half-subsets
(dtools.fid.interval), so the report says which lengths no score tells apart. REF should be images the
choice may look at: the training images themselves (the default of `dtools ema`), or a split of their
own, never the held-out images that will score the result (choosing on them would flatter it).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dtools import posthoc
from dtools.checkpoint import RUN_GUIDE_FILE
from dtools.fid.evaluate import extract_features, open_images
from dtools.fid.interval import SUBSETS, FixedReferenceFid, compare, fid_interval
from dtools.fid.metrics import MetricsConfig, check_stats, compute_metrics
from dtools.fid.stats import Stats, is_stats_file, load_stats, stats_from_features
from dtools.fid.weights import find_weights, load_inception
from dtools.fileio import temp_prefix
from dtools.plots import fid_vs_ema_length
from dtools.progress import log as log_line
from dtools.progress import progress_bar, status
from dtools.runtime import resolve_device
from dtools.sample import SampleConfig, Sink
from dtools.sample import run as sample_run


@dataclass(frozen=True)
class ChoiceConfig:
    run: Path
    reference: str
    lengths: tuple[float, ...]
    n: int = 500
    seed: int = 0
    guidance: float | None = None  # as `dtools sample --guidance`; None: its default
    batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    fid_weights: str | None = None
    subsets: int = SUBSETS


def reference_stats(cfg: ChoiceConfig, net, device, sha: str) -> Stats:
    """REF's statistics, with features (for KID): a `dtools fid --save-stats` file or images."""
    if is_stats_file(cfg.reference):
        return load_stats(cfg.reference)
    images = open_images(cfg.reference)
    with progress_bar("Inception features of the reference", images.count) as bar:
        feats = extract_features(net, images, cfg.batch_size, device, on_batch=bar.advance)
    return stats_from_features(feats, images.name, sha)


def choose(cfg: ChoiceConfig, log: Callable[[str], None] = log_line,
           plot: Path | None = None, force: bool = False) -> dict:
    """Score every length; returns the report ({"rows": [...], "chosen": σ_rel, ...}); the chosen
    length's weights and header are in report["weights"] and report["header"]."""
    checked = posthoc.read_snapshots(cfg.run)
    device = resolve_device(cfg.device)
    w = find_weights(cfg.fid_weights)
    for note in w.notes:
        log(f"Warning: {note}")
    net = load_inception(w, device)
    ref = reference_stats(cfg, net, device, w.sha256)
    check_stats(ref, MetricsConfig(), w.sha256)
    with status("preparing the reference (the square root of its covariance)"):
        scorer = FixedReferenceFid(ref.mu, ref.sigma, None if ref.features is None else ref.features.numpy())
    guide = cfg.run / RUN_GUIDE_FILE
    rows, intervals = [], {}
    # beside the snapshots, named so that a killed run's is swept (fileio.sweep_temps)
    with tempfile.TemporaryDirectory(prefix=temp_prefix("dtools-ema"), suffix=".tmp", dir=cfg.run) as tmp:
        for length in cfg.lengths:
            weights, header = posthoc.reconstruct(cfg.run, length, log=log, checked=checked)
            ckpt = Path(tmp) / "candidate.safetensors"
            posthoc.save(cfg.run, ckpt, weights, header, force=True)
            sample_cfg = SampleConfig(
                checkpoint=ckpt, n=cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, device=cfg.device,
                precision=cfg.precision, guidance=cfg.guidance,
                guide=guide if guide.is_file() and cfg.guidance != 0 else None).with_run_guide()
            npy = Path(tmp) / f"samples-{length:g}.npy"
            with Sink(str(npy), cfg.n, True, log=lambda _: None) as sink:
                seconds = sample_run(sample_cfg, sink, log=lambda _: None)
                sink.close()
            images = open_images(str(npy))
            with progress_bar(f"Inception features, EMA length {length:g}", images.count) as bar:
                feats = extract_features(net, images, cfg.batch_size, device, on_batch=bar.advance)
            iv = fid_interval(scorer, feats["2048"].numpy(), cfg.subsets)
            row = {"ema_length": length, "fid": iv.fid, "fid_low": iv.low, "fid_high": iv.high,
                   "profile_error": header["ema_posthoc"]["error"], "sampling_seconds": seconds}
            if ref.features is not None:
                k = compute_metrics(ref, stats_from_features(feats, str(npy), w.sha256),
                                    MetricsConfig(fid=False, kid=True))
                row.update(kid_mean=k["kid_mean"], kid_std=k["kid_std"])
            intervals[length] = iv
            rows.append(row)
            log(f"EMA length {length:g}: FID {iv.fid:.2f} [{iv.low:.2f}, {iv.high:.2f}]")
    best = min(rows, key=lambda r: r["fid"])
    for row in rows:
        row["ties"] = [o["ema_length"] for o in rows if o is not row
                       and not compare(intervals[row["ema_length"]], intervals[o["ema_length"]])[2]]
    weights, header = posthoc.reconstruct(cfg.run, best["ema_length"], log=lambda _: None, checked=checked)
    header["ema_posthoc"]["chosen_by"] = {"reference": ref.source, "reference_images": ref.count,
                                          "samples": cfg.n, "fid": best["fid"],
                                          "lengths": list(cfg.lengths)}
    if plot is not None:
        source = Path(ref.source).name  # no folder of this machine in the picture
        title = f"{cfg.run.name}: {cfg.n} samples per length against {ref.count} images of {source}"
        fid_vs_ema_length(rows, plot, best["ema_length"], force=force, title=title)
    return {"run": str(cfg.run), "reference": {"source": ref.source, "images": ref.count},
            "samples_per_length": cfg.n, "seed": cfg.seed, "rows": rows, "chosen": best["ema_length"],
            "weights": weights, "header": header}
