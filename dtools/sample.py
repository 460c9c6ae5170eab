"""Drawing images from a model checkpoint: the job behind `dtools sample`.

`SampleConfig` holds the command's options and checks those that need no checkpoint; `Sink` is where
the images go (a .npy on stdout, a .npy file, a numbered PNG folder, or one grid PNG), checked before
any work and written batch by batch; `run` loads the model, samples batch after batch under one
progress bar and says what it did through `log`: a diffusion model through a sampler's chain, a
model without one (a GAN's generator, a VAE's decoder: `dtools.models.MODEL_TYPES`) in one call on
z ~ N(0, I) per image
(`run_prior`). `Snapshots` collects the rows of --trajectory. Image i depends only on (seed, i), never
on the batch it was drawn in.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dtools import samplers
from dtools.checkpoint import (
    RUN_GUIDE_FILE,
    LoadedModel,
    class_names,
    guide_file,
    load_model,
    model_file,
    read_info,
)
from dtools.errors import DtoolsError, OptionError
from dtools.fileio import (
    atomic_write_bytes,
    check_writable,
    is_stdio,
    read_npy,
    refuse_terminal,
    sweep_temps,
    write_npy,
)
from dtools.grid import make_grid
from dtools.images import IMAGE_EXTS, numbered_index, numbered_png, png_bytes, to_uint8, write_png_folder
from dtools.labels import LABELS_FILE, labels_path, parse_class, write_labels
from dtools.locks import FolderLock, acquire
from dtools.models import MODEL_TYPES
from dtools.progress import log as log_line
from dtools.progress import progress_bar
from dtools.runtime import Runtime, resolve
from dtools.sampler_specs import DEFAULT_SAMPLER, check_applies, deterministic_samplers, lookup
from dtools.samplers.guidance import RUN_GUIDANCE, check_weight, parse_interval

# `dtools invert`'s chain, and how `sample --from-latents` and `dtools interpolate` decode by default: DDIM
# (η = 0) on 50 trailing steps, whose run forward the inversion is (docs/edit.md measures the round trip)
LATENT_SAMPLER = "ddim"
LATENT_STEPS = 50

# Beside the PNGs of an unfinished `sample -o DIR`: its options, so that the same command continues it
RECORD_FILE = ".dtools-sample.json"
RECORD_FORMAT = "dtools.sample-run"

TERMINAL_HINT = (
    "refusing to write binary .npy images to a terminal; pipe them (`| dtools grid -o out.png`), "
    "redirect (`> samples.npy`) or pass -o DIR for PNG files"
)


@dataclass(frozen=True)
class SampleConfig:
    """One `dtools sample` run; a field per option."""

    checkpoint: Path
    n: int = 64
    # the options of a diffusion model's chain; None: not given (a model without a chain refuses them)
    sampler: str | None = None  # None: DEFAULT_SAMPLER
    steps: int | None = None  # None: the sampler spec's default_steps (T for ddpm)
    seed: int = 0
    eta: float | None = None  # for the samplers that take it (None: their default)
    variance: str | None = None  # for the samplers that take it (None: their default)
    spacing: str | None = None  # None: trailing
    batch_size: int = 64
    weights: str = "ema"
    clip: bool | None = None  # None: on
    trajectory: int | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool | None = None
    # a class-conditional model's classes to draw (names or indices; "none": the null class, i.e.
    # unconditional); image i takes classes[i % len]. None: every class in turn
    classes: tuple[str, ...] | None = None
    per_class: int | None = None  # N images of every class, a row per class (overrides n)
    guidance: float | None = None  # w of D + w (D - D_weak); None: 0 (no guidance)
    guidance_interval: str | None = None  # "LO,HI": guide only where σ_t lies in (LO, HI]
    guide: Path | None = None  # autoguidance: the weaker model's checkpoint (or run folder)
    # decode these x_T (a .npy of float latents [N, C, H, W], `dtools invert`'s; '-' = stdin) instead of
    # drawing them: one image each (n is their number), by a deterministic sampler (ddim by default)
    from_latents: str | None = None

    def check(self) -> None:
        """The checks that need no more than the checkpoint's header; run before the output is even
        looked at."""
        info = read_info(self.checkpoint)
        if not MODEL_TYPES[info["model_type"]].schedule:
            given = [flag for flag, value in {**self.chain_options(), **self.guide_options()}.items()
                     if value is not None]
            if given:
                raise DtoolsError(f"{given[0]} does not apply to this {info['model_type']} checkpoint: it "
                                  "makes each image in one network call from z ~ N(0, I), with no sampler; "
                                  "drop it")
            return
        spec = check_applies(self.sampler_name, eta=self.eta, variance=self.variance)
        if self.from_latents is not None and not spec.is_deterministic(self.eta):
            how = f"--eta {self.eta:g}" if self.eta else f"--sampler {spec.name}"
            raise DtoolsError(f"--from-latents: {how} draws fresh noise at every step, so the image would "
                              f"not be the one the latents stand for; use a deterministic sampler: "
                              f"{deterministic_samplers()}")
        classes = class_names(info)
        if classes is None and (self.classes is not None or self.per_class is not None):
            given = "--class" if self.classes is not None else "--per-class"
            raise DtoolsError(f"{given}: {self.checkpoint} is an unconditional model (trained without class "
                              "labels); drop it")
        if classes is not None:
            self.class_plan(classes)
        if self.guidance is not None:
            check_weight(self.guidance)
        if self.guidance_interval is not None:
            parse_interval(self.guidance_interval)
        if self.guide is None and self.guidance:
            if classes is None:
                raise DtoolsError(f"--guidance: {self.checkpoint} is unconditional, so it has no null class "
                                  "to guide with; give a weaker model of the same data as --guide CKPT "
                                  "(autoguidance), e.g. RUN/guide.safetensors")
            if self.classes is not None and "none" in self.classes:
                raise DtoolsError("--guidance: --class none is the null class itself, which classifier-free "
                                  "guidance pushes away from; give real classes, or a --guide")
        if (self.guide is not None or self.guidance_interval is not None) and not self.guidance:
            given = "--guide" if self.guide is not None else "--guidance-interval"
            raise DtoolsError(f"{given} needs --guidance W > 0 (how strongly to guide)")

    def with_run_guide(self, beside: bool = True) -> SampleConfig:
        """`dtools sample`'s default guidance: an unconditional model in the run folder of `dtools train`,
        beside the early snapshot the run kept (RUN/guide.safetensors), is autoguided by it, at
        RUN_GUIDANCE unless --guidance says otherwise (0 turns it off); a --guide given without
        --guidance guides at RUN_GUIDANCE too. Decoding --from-latents is guided only when asked (the
        inversion was not). `beside` False: only the weight of a given --guide (`dtools edit`)."""
        if self.guide is not None:
            return self if self.guidance is not None else replace(self, guidance=RUN_GUIDANCE)
        if not beside or self.guidance == 0 or (self.from_latents is not None and self.guidance is None):
            return self
        path = model_file(self.checkpoint)
        guide = path.parent / RUN_GUIDE_FILE
        if not guide.is_file() or guide.resolve() == path.resolve():
            return self
        info = read_info(path)
        if not MODEL_TYPES[info["model_type"]].schedule or class_names(info) is not None:
            return self  # conditional digits: the snapshot's guidance raised FID (docs/guidance.md)
        return replace(self, guide=guide, guidance=RUN_GUIDANCE if self.guidance is None else self.guidance)

    def chain_options(self) -> dict[str, object]:
        """The options that only a diffusion model's sampling chain uses, by flag."""
        return {"--sampler": self.sampler, "--steps": self.steps, "--eta": self.eta,
                "--variance": self.variance, "--spacing": self.spacing,
                "--clip" if self.clip else "--no-clip": self.clip,
                "--trajectory": self.trajectory, "--from-latents": self.from_latents}

    def guide_options(self) -> dict[str, object]:
        """The options of conditioning and guidance, by flag."""
        return {"--class": self.classes, "--per-class": self.per_class, "--guidance": self.guidance,
                "--guidance-interval": self.guidance_interval, "--guide": self.guide}

    def class_plan(self, classes: tuple[str, ...]) -> list[int]:
        """The class index of images 0..n-1 of a class-conditional model (the null class for "none")."""
        null = len(classes)
        if self.per_class is not None:
            if self.classes is not None:
                raise DtoolsError("give --class (the classes to draw) or --per-class (every class), not both")
            return [c for c in range(len(classes)) for _ in range(self.per_class)]
        if self.classes is None:
            return [i % len(classes) for i in range(self.n)]
        chosen = [null if c == "none" else parse_class(c, classes) for c in self.classes]
        return [chosen[i % len(chosen)] for i in range(self.n)]

    @functools.cached_property
    def images(self) -> int:
        """Images drawn: --per-class N for every class of the model, else -n (the header is read once)."""
        if self.per_class is not None:
            info = read_info(self.checkpoint)
            return self.per_class * len(class_names(info) or ())
        return self.n

    @property
    def interval(self) -> tuple[float, float] | None:
        """--guidance-interval as (lo, hi) in σ; None: guidance at every step."""
        return None if self.guidance_interval is None else parse_interval(self.guidance_interval)

    def network_calls(self, sampler: str, steps: int, betas: np.ndarray, spacing: str = "trailing",
                      **chain: int) -> tuple[int, int]:
        """(network calls per image, of them the guide's) of a chain sampled with these options: the
        guidance weight and interval decide which calls are guided, whichever model guides;
        `chain` passes `start` and `resample` of an edit on to samplers.network_calls."""
        probe = None
        if self.guidance:
            probe = samplers.Guidance(float(self.guidance), _not_called, "eps", interval=self.interval)
        return samplers.network_calls(sampler, steps, betas, spacing, probe, **chain)

    @property
    def sampler_name(self) -> str:
        if self.sampler is not None:
            return self.sampler
        return LATENT_SAMPLER if self.from_latents is not None else DEFAULT_SAMPLER

    def steps_for(self, T: int) -> int:
        """--steps, or its default: the sampler's on a schedule of T steps; LATENT_STEPS for given
        latents (the chain `dtools invert` made them on)."""
        if self.steps is not None:
            return self.steps
        if self.from_latents is not None:
            return min(LATENT_STEPS, T)
        return lookup(self.sampler_name).steps_for(T)

    @property
    def count(self) -> int:
        """Images written: one per sample, or per sample two rows of --trajectory snapshots."""
        return self.images * 2 * self.trajectory if self.trajectory else self.images


class Snapshots:
    """Collects K states of one batch for --trajectory: x_t and x0_hat at evenly spaced steps.

    The chain has `steps` states before its last update plus the final image; column j shows state
    round(j * steps / (K - 1)), so the first column is x_T and the last the final image.
    """

    def __init__(self, k: int, steps: int):
        assert 2 <= k <= steps + 1, (k, steps)
        self.pick = [int(s) for s in np.round(np.linspace(0, steps, k))]
        self.x, self.x0, self.columns = {}, {}, [None] * k

    def take(self, event: dict) -> None:
        if event["step"] in self.pick:
            self.x[event["step"]] = to_uint8(event["x"])  # (B, H, W, C); x_t beyond [-1, 1] is clipped
            self.x0[event["step"]] = to_uint8(event["x0_hat"])
            self.columns[self.pick.index(event["step"])] = event["t"]

    def finish(self, images: np.ndarray) -> np.ndarray:
        """The batch's snapshots as uint8 (B * 2 * K, H, W, C), given its final images (B, H, W, C)."""
        last = self.pick[-1]
        self.x.setdefault(last, images)
        self.x0.setdefault(last, images)
        self.columns[-1] = self.columns[-1] if self.columns[-1] is not None else "x0"
        xs = np.stack([self.x[s] for s in self.pick], axis=1)  # (B, K, H, W, C)
        x0s = np.stack([self.x0[s] for s in self.pick], axis=1)  # (B, K, H, W, C)
        rows = np.stack([xs, x0s], axis=1)  # (B, 2, K, H, W, C): per image a row of x_t, then of x0_hat
        return rows.reshape(-1, *rows.shape[3:])  # (B * 2 * K, H, W, C)


class Sink:
    """Where the images go: stdout (.npy), a .npy file, one grid PNG (a name ending in .png; `nrow`
    images per row, default √N), or a PNG folder (any other name, or one ending in '/'); checked when made."""

    def __init__(self, output: str | None, count: int, force: bool, log: Callable[[str], None] = log_line,
                 nrow: int | None = None, record: dict | None = None):
        """`record` (`sample_record`, `dtools sample`'s): the options of the run, kept in a PNG folder
        while it is unfinished, so that the same command continues it after a kill."""
        self.output, self.count, self.force, self.log, self.nrow = output, count, force, log, nrow
        self.parts: list[np.ndarray] = []
        self.written = 0
        self.lock: FolderLock | None = None  # a PNG folder's, held until close (or the `with` block's end)
        self.continuing = False
        self.record: Path | None = None
        self.labels: tuple[list[int], tuple[str, ...]] | None = None
        suffix = "" if is_stdio(output) or output.endswith(("/", "\\")) else Path(output).suffix.lower()
        if is_stdio(output):
            self.kind = "stdout"
            refuse_terminal(output, TERMINAL_HINT)
        elif suffix == ".npy":
            self.kind = "npy"
            check_writable(output, force)
        elif suffix == ".png" and not Path(output).is_dir():
            self.kind = "grid"
            check_writable(output, force)
        elif suffix in IMAGE_EXTS and not Path(output).is_dir():
            raise DtoolsError(f"-o {output}: sample writes a grid as .png only (-o grid.png), or a folder of "
                              "PNGs (-o DIR/), or a .npy batch (-o FILE.npy, or `| dtools grid`)")
        else:
            self.kind = "png"
            folder = Path(output)
            if folder.exists() and not folder.is_dir():
                raise DtoolsError(f"{folder} exists and is not a folder")
            self.lock = acquire(folder)  # one writer per folder; created when missing
            try:
                self._open_folder(folder, record)
            except BaseException:
                self.lock.release()
                raise

    def _open_folder(self, folder: Path, record: dict | None) -> None:
        """Check the PNG folder (locked): an unfinished run of the same `record` is continued, anything
        else in the way needs --force; then write the record, before any image."""
        sweep_temps(folder)  # the temp files of a process killed while writing
        path = folder / RECORD_FILE
        have = sum((folder / numbered_png(i, self.count)).is_file() for i in range(self.count))
        saved = _read_record(path) if record is not None and path.is_file() and not self.force else None
        if saved is not None and saved != record and have:  # (no images yet: a run that failed early)
            raise DtoolsError(f"{folder} holds an unfinished `dtools sample` run with other options "
                              f"({_differences(saved, record)}); run that command again to finish it, "
                              "or pass --force to replace it")
        if saved is not None and saved == record:
            self.continuing = True
            self.log(f"continuing the unfinished run in {folder}: {have} of its {self.count} images are "
                     "there already")
        else:
            names = (folder / numbered_png(i, self.count) for i in range(self.count))
            clash = next((p for p in names if p.exists()), None)
            clash = clash or (labels_path(folder) if labels_path(folder).exists() else None)
            if clash is not None and not self.force:
                raise DtoolsError(f"{clash} already exists; pass --force to overwrite, or choose another "
                                  "folder")
        if record is not None:
            atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode(), force=True)
            self.record = path

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self.record is not None and not self.written:
            self.record.unlink(missing_ok=True)  # failed before its first image: nothing to continue
        self._release()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def has(self, start: int, k: int) -> bool:
        """Whether images start .. start+k-1 are in the folder already, from an interrupted run of the same
        options (their seeds make them the very images this run would draw): the caller skips them."""
        return self.continuing and all((Path(self.output) / numbered_png(i, self.count)).is_file()
                                       for i in range(start, start + k))

    def skip(self, k: int) -> None:
        """The next `k` images are there already (`has`)."""
        self.written += k

    def label(self, plan: list[int], classes: tuple[str, ...]) -> None:
        """The class each image was drawn for (the null class: "none"), written beside a PNG folder as
        dataset.json (dtools.labels) when it closes, for `dtools fid`'s conditioning accuracy."""
        self.labels = (plan, classes)

    def add(self, batch: np.ndarray) -> None:
        if self.kind == "png":  # written as they come, so an interrupted run keeps its finished images
            write_png_folder(batch, self.output, force=True, start=self.written, count=self.count)
        else:
            self.parts.append(batch)
        self.written += batch.shape[0]

    def close(self) -> None:
        if self.kind == "png":
            self._write_labels()
            self.log(f"wrote {self.written} PNGs to {self.output.rstrip('/')}/")
            if self.force:
                self._remove_stale()
            if self.record is not None:  # finished: nothing to continue
                self.record.unlink(missing_ok=True)
            self._release()
            return
        batch = np.concatenate(self.parts)
        if self.kind == "grid":
            picture = make_grid(batch, nrow=self.nrow, scale=None)  # as `| dtools grid -o FILE` lays it out
            atomic_write_bytes(self.output, png_bytes(picture), self.force)
            size = f"{picture.shape[1]}x{picture.shape[0]}"
            self.log(f"wrote {self.output} (a grid of {batch.shape[0]} images, {size})")
            return
        write_npy(batch, None if self.kind == "stdout" else self.output, self.force)
        if self.kind == "npy":
            self.log(f"wrote {self.output}")

    def _write_labels(self) -> None:
        """dataset.json for the classes of the images written (trajectory rows are not labelled)."""
        if self.labels is None or self.written != len(self.labels[0]):
            if self.force and labels_path(self.output).is_file():  # an earlier run's, not these images'
                labels_path(self.output).unlink()
            return
        plan, classes = self.labels
        names = [*classes, "none"] if len(classes) in plan else list(classes)
        files = [numbered_png(i, self.count) for i in range(self.written)]
        write_labels(self.output, files, plan, names, force=True)
        self.log(f"wrote {Path(self.output) / LABELS_FILE} (the class each image was drawn for)")

    def _remove_stale(self) -> None:
        """With --force, drop higher-numbered samples of an earlier, larger run from the folder, so that
        it holds exactly this run's images (a later `dtools fid` must not score stale ones)."""
        stale = [p for p in Path(self.output).glob("*.png")
                 if (i := numbered_index(p)) is not None and i >= self.written]
        for p in stale:
            p.unlink()
        if stale:
            self.log(f"removed {len(stale)} higher-numbered PNGs of an earlier run (--force)")


def _read_record(path: Path) -> dict | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _differences(saved: dict | None, record: dict) -> str:
    """Which recorded options differ, for the refusal: 'steps 50, now 20'."""
    if saved is None or saved.get("format") != RECORD_FORMAT:
        return f"its {RECORD_FILE} is unreadable"
    if saved.get("checkpoint") != record.get("checkpoint"):
        return "another checkpoint, or the same one since retrained"
    old, new = saved.get("options", {}), record["options"]
    diff = [f"{k} {old.get(k)}, now {new.get(k)}" for k in new if old.get(k) != new.get(k)]
    return "; ".join(diff[:3]) or "another count of images"


def _file_fingerprint(path: Path) -> dict:
    """A checkpoint's size and the SHA-256 of its header (tensor offsets, step, config): cheap, and it
    changes whenever the file is rewritten by a later checkpoint."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        digest = hashlib.sha256(head + f.read(min(n, 100_000_000))).hexdigest()
    return {"size": path.stat().st_size, "header_sha256": digest}


def sample_record(cfg: SampleConfig, latents: np.ndarray | None = None) -> dict:
    """What `dtools sample -o DIR` keeps in DIR/.dtools-sample.json until it finishes: every option and
    what the checkpoint (and guide, and --from-latents) hold. The same command finds the same record and
    continues; any difference is refused without --force."""
    options = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        options[f.name] = str(value) if isinstance(value, Path) else value
    record = {"format": RECORD_FORMAT, "count": cfg.count, "options": options,
              "checkpoint": _file_fingerprint(model_file(cfg.checkpoint))}
    if cfg.guide is not None:
        record["guide"] = _file_fingerprint(guide_file(cfg.guide))
    if latents is not None:
        record["latents_sha256"] = hashlib.sha256(np.ascontiguousarray(latents).tobytes()).hexdigest()
    return json.loads(json.dumps(record))  # as it reads back: tuples as lists


def image_shape_of(checkpoint: Path) -> tuple[int, int, int]:
    """(C, H, W) of the images a checkpoint's network makes, from its header alone."""
    info = read_info(checkpoint)
    return tuple(MODEL_TYPES[info["model_type"]].network_config(info["model"]).image_shape())


def read_latents(source: str, shape: tuple[int, int, int]) -> np.ndarray:
    """--from-latents: the x_T to decode, float [N, C, H, W] for a model of (C, H, W) images, checked;
    from a .npy file or '-' (stdin)."""
    name = "--from-latents " + ("stdin" if is_stdio(source) else str(source))
    arr = read_npy(source)
    if arr.dtype.kind != "f":
        hint = " (an image batch: `dtools invert` makes latents of it)" if arr.dtype == np.uint8 else ""
        raise DtoolsError(f"{name}: latents are floats x_T [N, C, H, W], got dtype {arr.dtype}{hint}")
    want = "[N, {}, {}, {}]".format(*shape)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(shape) or arr.shape[0] == 0:
        raise DtoolsError(f"{name}: latents of shape {list(arr.shape)}, but this model's x_T is {want} "
                          "(N >= 1); invert images with this model's `dtools invert`")
    bad = int(np.size(arr) - np.isfinite(arr).sum())
    if bad:
        raise DtoolsError(f"{name}: {bad} of its {arr.size} values are NaN or infinite")
    return arr


def with_latents(cfg: SampleConfig) -> tuple[SampleConfig, np.ndarray | None]:
    """The config with n set to the number of --from-latents latents, and the latents (read and checked
    before any output is looked at); (cfg, None) without --from-latents."""
    if cfg.from_latents is None:
        return cfg, None
    if cfg.per_class is not None:
        raise DtoolsError("--per-class does not apply to --from-latents (the latents say how many images); "
                          "give --class for their classes")
    latents = read_latents(cfg.from_latents, image_shape_of(cfg.checkpoint))
    return replace(cfg, n=latents.shape[0]), latents


def load(cfg: SampleConfig) -> tuple[LoadedModel, Runtime]:
    """The checkpoint's network on the chosen device, compiled if asked."""
    rt = resolve(cfg.device, cfg.precision, cfg.compile)
    loaded = load_model(cfg.checkpoint, cfg.weights, rt.device)
    if loaded.schedule is not None:  # a diffusion U-Net: channels-last, as train's grids run it
        rt.prepare(loaded.network)
    if rt.compile:
        loaded.network.compile()
    return loaded, rt


def _not_called(*args: object) -> torch.Tensor:
    raise AssertionError("counting network calls calls no network")


def image_seeds(cfg: SampleConfig) -> list[int]:
    """The per-image seeds: image i's depends only on --seed and i; with --per-class N, image j of every
    class takes the seed of image j, so each row of classes starts from the same N noises."""
    if cfg.per_class is not None:
        return [samplers.image_seed(cfg.seed, i % cfg.per_class) for i in range(cfg.images)]
    return [samplers.image_seed(cfg.seed, i) for i in range(cfg.images)]


def seed_batches(cfg: SampleConfig) -> list[list[int]]:
    """The per-image seeds (`image_seeds`) in --batch-size groups."""
    seeds = image_seeds(cfg)
    return [seeds[i:i + cfg.batch_size] for i in range(0, len(seeds), cfg.batch_size)]


@dataclass(frozen=True)
class Guide:
    """What guides a sampling run: the weak denoiser's network call and parameterization, whether it
    takes the class (a guide with the model's classes) or the null class (classifier-free guidance),
    and how the log line names it."""

    fn: samplers.ModelFn
    parameterization: str
    cond: str  # "same": the image's class; "null": the null class; "none": no condition
    what: str

    def guidance(self, cfg: SampleConfig, y: torch.Tensor | None, null: int) -> samplers.Guidance:
        """The batch's Guidance (its classes `y` (B,), or None)."""
        weak = None
        if self.cond == "same":
            weak = y
        elif self.cond == "null":
            assert y is not None
            weak = torch.full_like(y, null)
        w = float(cfg.guidance or 0.0)
        return samplers.Guidance(w, self.fn, self.parameterization, weak, cfg.interval)


def load_guide(cfg: SampleConfig, main: LoadedModel, rt: Runtime) -> Guide | None:
    """The weak denoiser of --guidance: the --guide checkpoint (checked against the model: a denoiser of
    the same schedule, image shape and classes), or the model's own null class; None without guidance."""
    if not cfg.guidance:
        return None
    if cfg.guide is None:
        return Guide(rt.model_fn(main.network), main.parameterization, "null",
                     f"classifier-free, w={cfg.guidance:g}")
    path = guide_file(cfg.guide)
    if path.resolve() == model_file(cfg.checkpoint).resolve() and cfg.weights == "ema":
        raise DtoolsError(f"--guide {cfg.guide} is the model itself, which guidance would not change; "
                          "give a weaker model (e.g. RUN/guide.safetensors, an early snapshot)")
    guide = load_model(path, "ema", rt.device)
    if guide.schedule is None:
        raise DtoolsError(f"--guide {path}: a {guide.info['model_type']} model, not a denoiser")
    if not torch.equal(guide.schedule.betas, main.schedule.betas):
        raise DtoolsError(f"--guide {path}: trained with another noise schedule than {cfg.checkpoint}; a "
                          "guide must share the model's schedule")
    if guide.image_shape != main.image_shape:
        g, m = guide.image_shape, main.image_shape
        raise DtoolsError(f"--guide {path}: makes {g[1]}x{g[2]}x{g[0]} images, the model "
                          f"{m[1]}x{m[2]}x{m[0]}")
    if guide.classes is not None and main.classes is not None and guide.classes != main.classes:
        raise DtoolsError(f"--guide {path}: conditioned on other classes than the model")
    rt.prepare(guide.network)
    if rt.compile:
        guide.network.compile()
    cond = "none" if guide.classes is None else ("same" if main.classes is not None else "null")
    return Guide(rt.model_fn(guide.network), guide.parameterization, cond,
                 f"autoguidance by {path}, w={cfg.guidance:g}")


def run(cfg: SampleConfig, sink: Sink, log: Callable[[str], None] = log_line,
        latents: np.ndarray | None = None) -> float:
    """Sample `cfg.images` images (or trajectories) into `sink`; returns the seconds spent sampling.
    `latents` (`with_latents`): the x_T [n, C, H, W] of --from-latents, decoded instead of drawn."""
    loaded, rt = load(cfg)
    if loaded.schedule is None:
        return run_prior(cfg, loaded, rt, sink, log)
    model, schedule, param, info = loaded
    spec, spacing = lookup(cfg.sampler_name), cfg.spacing or "trailing"
    steps = cfg.steps_for(schedule.T)
    if cfg.trajectory is not None and cfg.trajectory > steps + 1:
        raise OptionError("--trajectory", f"{cfg.trajectory}: the chain has only {steps + 1} states to show")
    samplers.check_options(spec.name, param, spacing, eta=cfg.eta, variance=cfg.variance)
    samplers.Chain.make(schedule.betas.numpy(), steps, spacing)  # --steps out of range: fail now
    opts = dict(sampler=spec.name, steps=steps, spacing=spacing, eta=cfg.eta, variance=cfg.variance)
    shape = loaded.image_shape
    classes = loaded.classes
    plan = cfg.class_plan(classes) if classes is not None else None
    guide = load_guide(cfg, loaded, rt)
    null = len(classes) if classes is not None else 0

    model_fn = rt.model_fn(model)  # precision and memory format as in train's grids
    what = "trajectories" if cfg.trajectory else "images"
    calls, weak = cfg.network_calls(spec.name, steps, schedule.betas.numpy(), spacing)
    guided = f"; {guide.what}, {weak} of them the guide's" if guide is not None else ""
    drawn = f", {_class_text(plan, classes)}" if plan is not None else ""
    source = f" from the latents of {cfg.from_latents}" if latents is not None else ""
    log(f"sampling {cfg.images} {what}{source} of {shape[1]}x{shape[2]}x{shape[0]} from {cfg.checkpoint} "
        f"(step {info.get('step', '?')}, {param}, {cfg.weights} weights){drawn}: {spec.name}, {steps} steps "
        f"({calls} network calls/image{guided}), {rt.describe()}")
    if plan is not None:
        sink.label(plan, classes)
    batches = seed_batches(cfg)
    start = time.perf_counter()
    snaps = None
    done = 0
    with progress_bar("sampling", len(batches) * steps) as bar:
        per = 2 * cfg.trajectory if cfg.trajectory else 1  # files per image
        for batch in batches:
            if sink.has(done * per, len(batch) * per):  # an interrupted run of these options drew them
                sink.skip(len(batch) * per)
                done += len(batch)
                bar.advance(steps)
                continue
            snaps = Snapshots(cfg.trajectory, steps) if cfg.trajectory else None

            def on_step(event: dict, snaps=snaps) -> None:
                if snaps is not None:
                    snaps.take(event)
                bar.advance()

            y = None if plan is None else torch.tensor(plan[done:done + len(batch)], device=rt.device)
            guidance = guide.guidance(cfg, y, null) if guide is not None else None
            x_T = None if latents is None else torch.from_numpy(latents[done:done + len(batch)])
            x = samplers.generate(model_fn, schedule, param, shape, batch, device=rt.device,
                                  clip_x0=cfg.clip is not False, cond=y, guidance=guidance, callback=on_step,
                                  x_T=x_T, **opts)
            done += len(batch)
            images = to_uint8(x)  # (B, H, W, C)
            sink.add(snaps.finish(images) if snaps is not None else images)
    elapsed = time.perf_counter() - start
    log(f"sampled {cfg.images} {what} in {elapsed:.1f} s ({elapsed / cfg.images:.3f} s/image)")
    if snaps is not None:
        log(f"trajectory columns: t = {', '.join(map(str, snaps.columns))} (x0 = the final image); "
            "rows per image: x_t, then predicted x0")
    return elapsed


def _class_text(plan: list[int], classes: tuple[str, ...]) -> str:
    """'classes 0-9 in turn' / 'class 3 (three)' for the log line."""
    used = sorted(set(plan))
    name = lambda c: "none (unconditional)" if c == len(classes) else f"{c} ({classes[c]})"  # noqa: E731
    if len(used) == 1:
        return f"class {name(used[0])}"
    if len(used) <= 4:
        return "classes " + ", ".join(name(c) for c in used)
    return f"{len(used)} classes"


def run_prior(
    cfg: SampleConfig, loaded: LoadedModel, rt: Runtime, sink: Sink, log: Callable[[str], None] = log_line
) -> float:
    """`run` for a model without a chain (a GAN's generator, a VAE's decoder): each image is one network
    call on z ~ N(0, I) drawn from the image's own generator."""
    network, info = loaded.network, loaded.info
    c, h, w = loaded.image_shape

    def decode(z: torch.Tensor) -> torch.Tensor:
        with rt.autocast():
            return network(z).float()

    log(f"sampling {cfg.n} images of {h}x{w}x{c} from {cfg.checkpoint} (step {info.get('step', '?')}, "
        f"{info['model_type']}, {cfg.weights} weights): z ~ N(0, I) of {network.latent_dim} dimensions, "
        f"1 network call/image, {rt.describe()}")
    batches = seed_batches(cfg)
    start = time.perf_counter()
    with progress_bar("sampling", len(batches)) as bar:
        done = 0
        for batch in batches:
            if sink.has(done, len(batch)):  # an interrupted run of these options drew them
                sink.skip(len(batch))
            else:
                x = samplers.generate_from_prior(decode, network.latent_dim, batch, device=rt.device)
                sink.add(to_uint8(x))
            done += len(batch)
            bar.advance()
    elapsed = time.perf_counter() - start
    log(f"sampled {cfg.images} images in {elapsed:.2f} s ({1000 * elapsed / cfg.images:.3f} ms/image)")
    return elapsed
