"""FID against sampling cost, the job behind `dtools sweep`: one checkpoint, several samplers and step
counts, the same seeds for each, every setting scored against one reference.

The list of settings is `SAMPLER:STEPS` items separated by commas; a bare number repeats the sampler
before it, and a bare sampler name takes its default steps (T for ddpm, 20 for the others):
`ddpm:1000,ddim:50,dpm++2m:10,20` is ddpm 1000, ddim 50, dpm++2m 10 and dpm++2m 20. Sampler names
contain no ':' or ',' and never are numbers, so every list reads one way only.

Everything is checked before any work: the list, the checkpoint and each setting's steps, the
reference, the files to write. Then the reference statistics (features included, for KID) are
computed once and saved as OUT/reference.safetensors, unless REF already is such a file; each setting
is sampled by `dtools.sample` into OUT/SAMPLER-STEPS.npy (image i from the seed of image i, whatever
the setting), timed, and scored: FID with its half-sampling interval (`dtools.fid.interval`) and KID.
Settings are compared pairwise on the same half-subsets; the report says which ones no score can tell
apart. The plot of FID against network calls goes to OUT/sweep.png, the report to OUT/sweep.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtools import samplers
from dtools.checkpoint import load_model, read_info
from dtools.errors import DtoolsError, OptionError
from dtools.fid.evaluate import extract_features, open_images
from dtools.fid.interval import SUBSETS, FixedReferenceFid, Interval, compare, fid_interval
from dtools.fid.metrics import MetricsConfig, bias_warning, check_stats, compute_metrics
from dtools.fid.stats import Stats, is_stats_file, load_stats, save_stats, stats_from_features
from dtools.fid.weights import find_weights, load_inception
from dtools.fileio import atomic_write_bytes, check_writable
from dtools.models import MODEL_TYPES
from dtools.plots import fid_vs_cost
from dtools.progress import log as log_line
from dtools.progress import progress_bar, status
from dtools.runtime import resolve_device
from dtools.sample import SampleConfig, Sink
from dtools.sample import run as sample_run
from dtools.sampler_specs import SAMPLERS, lookup
from dtools.samplers.guidance import check_weight, parse_interval

REFERENCE_FILE = "reference.safetensors"
PLOT_FILE = "sweep.png"
REPORT_FILE = "sweep.json"


@dataclass(frozen=True)
class Setting:
    sampler: str
    steps: int | None  # None: the sampler's default, known once the checkpoint's T is
    guidance: float | None = None  # as `dtools sample --guidance` (None: its default)
    interval: str | None = None  # as `dtools sample --guidance-interval` (None: its default)
    tagged: bool = False  # the guidance varies across the sweep: the label and file name say which

    def label(self) -> str:
        base = f"{self.sampler}:{self.steps}"
        return f"{base} {self.guide_label()}" if self.tagged else base

    def guide_label(self) -> str:
        """`w=1`, `w=2 in (0.28,5.42]`: the setting's guidance, as the table and the plot show it."""
        text = "w=default" if self.guidance is None else f"w={self.guidance:g}"
        if self.interval is not None:
            lo, hi = parse_interval(self.interval)
            text += f" in ({lo:g},{hi:g}]"
        return text


def parse_guidances(text: str | None) -> list[float | None]:
    """`--guidance 0,0.5,1,2` -> the weights, each a setting; None: `dtools sample`'s default only."""
    if text is None:
        return [None]
    out: list[float | None] = []
    for item in str(text).split(","):
        try:
            w = check_weight(float(item))
        except ValueError:
            raise OptionError("--guidance", f"expects weights W >= 0, comma-separated, like 0,1,2; got "
                              f"{item.strip()!r}") from None
        if w in out:
            raise OptionError("--guidance", f"{w:g} is listed twice")
        out.append(w)
    return out


def parse_intervals(items: str | tuple[str, ...] | list[str] | None) -> list[str | None]:
    """Each `--guidance-interval LO,HI` given, a setting (0,inf: every step); none: the default only."""
    if not items:
        return [None]
    items = [items] if isinstance(items, str) else list(items)
    seen: list[tuple[float, float]] = []
    for item in items:
        iv = parse_interval(item)
        if iv in seen:
            raise OptionError("--guidance-interval", f"{item} is given twice")
        seen.append(iv)
    return items


def parse_settings(spec: str) -> list[Setting]:
    """`ddpm:1000,ddim:50,dpm++2m:10,20` -> the settings it names (see module doc)."""
    out: list[Setting] = []
    for raw in spec.split(","):
        item = raw.strip()
        name, colon, steps = item.partition(":")
        if not colon and item.isdigit():  # a bare number: the sampler before it again
            if not out:
                msg = f"{item!r} has no sampler before it; write SAMPLER:STEPS first"
                raise OptionError("--samplers", msg)
            name, steps = out[-1].sampler, item
        if not name:
            raise OptionError("--samplers", f"empty item in {spec!r}; write e.g. ddim:50,dpm++2m:10,20")
        lookup(name, "--samplers", item)
        if (colon or steps) and not steps.isdigit():
            raise OptionError("--samplers", f"{item!r}: steps must be a whole number, as in {name}:50")
        out.append(Setting(name, int(steps) if steps else None))
    return out


@dataclass(frozen=True)
class SweepConfig:
    """What `dtools sweep` is asked to do (one field per option, less --json)."""

    checkpoint: Path
    reference: str
    samplers: str
    out: str
    n: int = 1000
    seed: int = 0
    subsets: int = SUBSETS
    weights: str = "ema"
    fid_weights: str | None = None
    batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    compile: bool | None = None
    force: bool = False
    # as `dtools sample --guidance` and `--guidance-interval`, but lists: "0,1,2" (each weight a setting)
    # and ("0.28,5.42", "0,inf") (each interval a setting), crossed with every sampler setting
    guidance: str | float | None = None
    guidance_interval: str | tuple[str, ...] | None = None
    guide: Path | None = None

    def sample_config(self, s: Setting) -> SampleConfig:
        return SampleConfig(checkpoint=self.checkpoint, n=self.n, sampler=s.sampler, steps=s.steps,
                            seed=self.seed, batch_size=self.batch_size, weights=self.weights,
                            device=self.device, precision=self.precision, compile=self.compile,
                            guidance=s.guidance, guidance_interval=s.interval,
                            guide=self.guide if s.guidance != 0 else None,  # w=0: the unguided run
                            ).with_run_guide()  # sample's default guidance

    def network_calls(self, s: Setting) -> int:
        """Network calls per image of a setting, the guide's included."""
        betas = np.asarray(read_info(self.checkpoint)["betas"], dtype=np.float64)
        return self.sample_config(s).network_calls(s.sampler, s.steps, betas)[0]


def resolve_settings(cfg: SweepConfig) -> list[Setting]:
    """The settings with their steps, each checked against the checkpoint's schedule; no duplicates."""
    settings = parse_settings(cfg.samplers)
    kind = read_info(cfg.checkpoint)["model_type"]  # a bad checkpoint fails now, not after minutes
    if not MODEL_TYPES[kind].schedule:
        raise DtoolsError(f"{cfg.checkpoint} holds a {kind} model: it makes each image in one network call, "
                          "with no sampler to sweep; score its samples with `dtools fid`")
    loaded = load_model(cfg.checkpoint, cfg.weights, "cpu")
    betas = loaded.schedule.betas.numpy()
    weights, intervals = parse_guidances(cfg.guidance), parse_intervals(cfg.guidance_interval)
    tagged = len(weights) > 1 or len(intervals) > 1
    out: list[Setting] = []
    for s in settings:
        steps = s.steps or SAMPLERS[s.sampler].steps_for(len(betas))
        s = Setting(s.sampler, steps)
        try:
            samplers.check_options(s.sampler, loaded.parameterization)
            samplers.Chain.make(betas, steps)
        except DtoolsError as e:
            # an OptionError of the chain names its own option: "ddim:51: --steps must lie in [2, 50] ..."
            detail = f"{e.option} {e.message}" if isinstance(e, OptionError) else str(e)
            raise OptionError("--samplers", f"{s.label()}: {detail}") from None
        if any(o.sampler == s.sampler and o.steps == s.steps for o in out):
            raise OptionError("--samplers", f"{s.label()} is listed twice")
        for w in weights:
            for iv in intervals if w != 0 else [None]:  # no guidance has no interval
                out.append(Setting(s.sampler, steps, w, iv, tagged))
    return out


def npy_name(s: Setting) -> str:
    """SAMPLER-STEPS.npy; where the guidance varies, SAMPLER-STEPS-wW[-LO-HI].npy."""
    if not s.tagged:
        return f"{s.sampler}-{s.steps}.npy"
    name = f"{s.sampler}-{s.steps}-w{'default' if s.guidance is None else f'{s.guidance:g}'}"
    if s.interval is not None:
        lo, hi = parse_interval(s.interval)
        name += f"-{lo:g}-{hi:g}"
    return name + ".npy"


def check_request(cfg: SweepConfig) -> tuple[list[Setting], Stats | None]:
    """Everything that can be refused before sampling: settings, checkpoint, reference, outputs."""
    if cfg.n < 2:
        raise OptionError("-n", f"FID needs at least 2 samples per setting, got {cfg.n}")
    if cfg.subsets < 2:
        raise OptionError("--subsets", f"an interval needs at least 2 subsets, got {cfg.subsets}")
    settings = resolve_settings(cfg)
    for s in settings:
        cfg.sample_config(s).check()  # the guidance options
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise DtoolsError(f"{out} exists and is not a folder")
    ref_stats = None
    if is_stats_file(cfg.reference):
        ref_stats = load_stats(cfg.reference)
    else:
        open_images(cfg.reference)  # exists, holds images
        check_writable(out / REFERENCE_FILE, cfg.force)
    for name in [PLOT_FILE, REPORT_FILE, *(npy_name(s) for s in settings)]:
        check_writable(out / name, cfg.force)
    return settings, ref_stats


def sweep(cfg: SweepConfig, log: Callable[[str], None] = log_line) -> dict:
    """Sample and score every setting; write the plot and the report; return the report."""
    settings, ref = check_request(cfg)
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    w = find_weights(cfg.fid_weights)
    for note in w.notes:
        log(f"Warning: {note}")
    net = load_inception(w, device)
    if ref is None:
        images = open_images(cfg.reference)
        ref = stats_from_features(_features(net, images, cfg, device, "reference"), images.name, w.sha256)
        save_stats(out / REFERENCE_FILE, ref, with_features=True, force=cfg.force)
        log(f"wrote statistics of {ref.count} reference images to {out / REFERENCE_FILE} (pass it as REF "
            "next time)")
    check_stats(ref, MetricsConfig(), w.sha256)
    kid = ref.features is not None
    notes = [] if kid else [f"{ref.from_file} holds no features: no KID (remake it with dtools fid REF "
                            "--save-stats FILE --kid)"]
    with status("preparing the reference (the square root of its covariance)"):
        scorer = FixedReferenceFid(ref.mu, ref.sigma, None if ref.features is None else ref.features.numpy())
    rows, intervals = [], {}
    for s in settings:
        row, intervals[s.label()] = _run_setting(cfg, s, net, device, ref, scorer, w.sha256, kid, log)
        rows.append(row)
    _mark_ties(rows, intervals)
    notes += [warning] if (warning := bias_warning([cfg.n, ref.count])) else []
    report = {
        "checkpoint": str(cfg.checkpoint), "samples_per_setting": cfg.n, "seed": cfg.seed,
        "reference": {"source": ref.source, "images": ref.count, "stats_file": ref.from_file or
                      str(out / REFERENCE_FILE)},
        "interval": {"method": "half-sampling", "subsets": cfg.subsets, "level": 0.95},
        "rows": rows, "plot": str(out / PLOT_FILE), "warnings": notes,
    }
    ckpt = Path(cfg.checkpoint)
    title = f"{ckpt.parent.name}/{ckpt.name}: {cfg.n} samples per setting, {ref.count} reference images"
    fid_vs_cost(rows, out / PLOT_FILE, force=cfg.force, title=title)
    atomic_write_bytes(out / REPORT_FILE, (json.dumps(report, indent=1) + "\n").encode(), force=cfg.force)
    log(f"wrote {out / PLOT_FILE} and {out / REPORT_FILE}")
    return report


def _features(net, images, cfg: SweepConfig, device, what: str):
    with progress_bar(f"Inception features of {what}", images.count) as bar:
        return extract_features(net, images, cfg.batch_size, device, on_batch=bar.advance)


def _run_setting(cfg: SweepConfig, s: Setting, net, device, ref: Stats, scorer: FixedReferenceFid,
                 sha: str, kid: bool, log: Callable[[str], None]) -> tuple[dict, Interval]:
    """Sample one setting into its .npy, time it, and score it."""
    path = Path(cfg.out) / npy_name(s)
    with Sink(str(path), cfg.n, cfg.force, log=log) as sink:
        seconds = sample_run(cfg.sample_config(s), sink, log=log)
        sink.close()
    feats = _features(net, open_images(str(path)), cfg, device, s.label())
    with status(f"scoring {s.label()} (FID on {cfg.subsets} half-subsets)"):
        iv = fid_interval(scorer, feats["2048"].numpy(), cfg.subsets)
        row = {"setting": s.label(), "sampler": s.sampler, "steps": s.steps,
               **({"curve": f"{s.sampler} {s.guide_label()}", "guidance": s.guidance,
                   "guidance_interval": s.interval} if s.tagged else {}),
               "nfe": cfg.network_calls(s), "seconds": seconds,
               "seconds_per_image": seconds / cfg.n,
               "fid": iv.fid, "fid_low": iv.low, "fid_high": iv.high, "samples_file": str(path)}
        if kid:
            stats = stats_from_features(feats, str(path), sha)
            k = compute_metrics(ref, stats, MetricsConfig(fid=False, kid=True))
            row.update(kid_mean=k["kid_mean"], kid_std=k["kid_std"], kid_subset_size=k["kid_subset_size"])
    log(f"{s.label()}: FID {iv.fid:.2f} [{iv.low:.2f}, {iv.high:.2f}], {seconds:.1f} s of sampling")
    return row, iv


def _mark_ties(rows: list[dict], intervals: dict[str, Interval]) -> None:
    """Each row's `ties`: the settings whose FID it cannot be told apart from (the 95% interval of the
    paired difference holds 0)."""
    for row in rows:
        row["ties"] = [other["setting"] for other in rows if other is not row
                       and not compare(intervals[row["setting"]], intervals[other["setting"]])[2]]


def markdown(report: dict) -> str:
    """The report as a markdown table, and the notes under it."""
    has_kid = any("kid_mean" in r for r in report["rows"])
    head = ["setting", "network calls", "wall time", "FID", "95% interval", *(["KID"] if has_kid else []),
            "no clear difference from"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [r["setting"], str(r["nfe"]), _seconds(r["seconds"]), f"{r['fid']:.2f}",
                 f"{r['fid_low']:.2f}-{r['fid_high']:.2f}"]
        if has_kid:
            cells.append(f"{r['kid_mean']:.4f} ± {r['kid_std']:.4f}" if "kid_mean" in r else "n/a")
        cells.append(", ".join(r["ties"]) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    ref = report["reference"]
    lines += ["", f"{report['samples_per_setting']} samples per setting (seed {report['seed']}: image i "
              f"starts from the same noise in every setting) against {ref['images']} reference images "
              f"({ref['source']}); wall time: sampling only. Interval: half-sampling over "
              f"{report['interval']['subsets']} subsets; 'no clear difference': the 95% interval of the "
              "paired FID difference holds 0."]
    return "\n".join(lines)


def _seconds(x: float) -> str:
    return f"{x:.0f} s" if x >= 100 else f"{x:.1f} s" if x >= 1 else f"{x:.3f} s"
