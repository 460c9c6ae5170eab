"""Editing with a trained diffusion model: the jobs behind `dtools edit`, `dtools invert` and
`dtools interpolate`.

- `edit`: SDEdit at a --strength, and inpainting with --mask (the replacement method, RePaint's
  resampling with --resample); the maths is dtools.samplers.editing. Images go to a `Sink` as
  `dtools sample`'s do; image i's noise depends only on (--seed, i).
- `invert`: DDIM run forward from each image to its x_T (dtools.samplers.inversion), written as a float32
  .npy [N, C, H, W] that `dtools sample --from-latents` decodes.
- `interpolate`: frames along the great circle (slerp) between the x_T of two images (inverted) or of
  two seeds, decoded like `sample --from-latents`.

The inputs must be images of the model's size and channels, or are fitted to it with `resize` (centre
crop and Lanczos, as `dtools prep`); every check that needs no network runs before the output is looked
at, and that before any network call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dtools import samplers
from dtools.checkpoint import LoadedModel, read_info
from dtools.errors import DtoolsError, OptionError
from dtools.fileio import is_stdio, write_npy
from dtools.images import from_uint8, match_channels, read_images, to_uint8
from dtools.models import MODEL_TYPES
from dtools.prep import PrepConfig, prepare_image
from dtools.progress import log as log_line
from dtools.progress import progress_bar
from dtools.runtime import Runtime
from dtools.sample import LATENT_STEPS, SampleConfig, Sink, image_seeds, image_shape_of, load, load_guide
from dtools.sampler_specs import deterministic_samplers, lookup
from dtools.samplers.editing import check_strength, edit, start_index
from dtools.samplers.inversion import frames, invert

# --strength without a mask (Meng et al. find 0.3-0.6 balances realism against faithfulness)
SDEDIT_STRENGTH = 0.5

Log = Callable[[str], None]


def require_chain(checkpoint: Path, command: str) -> None:
    """A one-line refusal of a checkpoint without a sampler chain (a GAN's, a VAE's)."""
    info = read_info(checkpoint)
    kind = info["model_type"]
    if not MODEL_TYPES[kind].schedule:
        raise DtoolsError(f"{command} needs a diffusion model's chain of noise levels; {checkpoint} is a "
                          f"{kind} checkpoint, which makes each image in one call from z ~ N(0, I)")


def read_inputs(sources: Sequence[str], shape: tuple[int, int, int], resize: bool,
                limit: int | None = None) -> np.ndarray:
    """The images to edit or invert as uint8 [N, H, W, C] of the model's (C, H, W); images of another size
    or channel count are refused, or fitted with `resize` (centre crop, Lanczos; grey <-> RGB)."""
    if not sources:
        raise DtoolsError("no images given: pass image files, folders, .npy batches, or - for stdin")
    if sum(is_stdio(s) for s in sources) > 1:
        raise DtoolsError("stdin ('-') can feed only one input: write the others to files first")
    c, h, w = shape
    images = read_images(sources, limit=limit)  # (N, H, W, C)
    if images.shape[1:] == (h, w, c):
        return images
    n, ih, iw, ic = images.shape
    if not resize:
        raise DtoolsError(f"{', '.join(sources)}: images of {iw}x{ih}x{ic}, but the model takes {w}x{h}x{c}; "
                          f"pass --resize to fit them (centre crop, Lanczos) or run `dtools prep SRC OUT "
                          f"--size {h}{' --channels 1' if c == 1 else ''}` first")
    if (ih, iw) == (h, w):
        return match_channels(images, c)
    assert h == w, shape  # the networks make square images
    mode = "L" if ic == 1 else "RGB"
    cfg = PrepConfig(size=h, channels=c)
    return np.stack([prepare_image(Image.fromarray(im[..., 0] if ic == 1 else im, mode), cfg)
                     for im in images])


def read_masks(source: str, n: int, shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    """--mask: bool [N, H, W], True where the image is regenerated (white, >= 128; grey levels from a
    colour PNG's luminance); one mask for all N images or one per image."""
    _, h, w = shape
    masks = read_images([source], channels=1)[..., 0]  # (M, H, W)
    m, mh, mw = masks.shape
    if m not in (1, n):
        raise DtoolsError(f"--mask {source}: {m} masks for {n} images; give one mask for all or one per "
                          "image")
    if (mh, mw) != (h, w):
        if not resize:
            raise DtoolsError(f"--mask {source}: masks of {mw}x{mh}, but the images are {w}x{h} (the model's "
                              "size); make them the same size, or pass --resize")
        nearest = Image.Resampling.NEAREST
        masks = np.stack([np.asarray(Image.fromarray(im).resize((w, h), nearest)) for im in masks])
    regenerate = masks >= 128
    return np.broadcast_to(regenerate, (n, h, w)) if m == 1 else regenerate


def class_plan(cfg: SampleConfig, classes: tuple[str, ...] | None, default_null: bool) -> list[int] | None:
    """The class of each image of a conditional model (None: unconditional): --class in turn; without
    it every class in turn, or (`default_null`) the null class, for images whose class is unknown."""
    if classes is None:
        return None
    if cfg.classes is None and default_null:
        return [len(classes)] * cfg.n
    return cfg.class_plan(classes)


def latent_steps(cfg: SampleConfig, T: int) -> int:
    """--steps of invert and interpolate: as given, else LATENT_STEPS (as `sample --from-latents`)."""
    return cfg.steps if cfg.steps is not None else min(LATENT_STEPS, T)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


# ----------------------------------------------------------------------------------------------- edit
@dataclass(frozen=True)
class EditConfig:
    """One `dtools edit` run: the sampling options (checkpoint, sampler, seed, classes, guidance, device)
    and the edit's own."""

    sampling: SampleConfig
    sources: tuple[str, ...]
    strength: float | None = None  # None: SDEDIT_STRENGTH, or 1 with a mask
    mask: str | None = None
    resample: int = 0  # RePaint's jumps back per step (needs a mask)
    resize: bool = False
    limit: int | None = None  # only the first N images

    @property
    def strength_value(self) -> float:
        if self.strength is not None:
            return self.strength
        return 1.0 if self.mask is not None else SDEDIT_STRENGTH

    def check(self) -> None:
        require_chain(self.sampling.checkpoint, "edit")
        if self.strength is not None:
            check_strength(self.strength)
        if self.resample < 0:
            raise OptionError("--resample", f"must be >= 0, got {self.resample}")
        if self.resample and self.mask is None:
            raise DtoolsError("--resample resamples around the kept region of inpainting: give --mask too")
        if self.mask is not None and is_stdio(self.mask) and any(is_stdio(s) for s in self.sources):
            raise DtoolsError("stdin ('-') can feed only one input: write the images or the masks to a file")
        if self.sampling.per_class is not None:
            raise DtoolsError("--per-class does not apply to edit: the inputs say how many images")
        self.sampling.check()
        s = self.sampling
        if s.guidance and s.guide is None and s.classes is None:
            raise DtoolsError("--guidance: classifier-free guidance needs the class to guide towards; give "
                              "--class (edit uses the null class without it)")


@dataclass
class EditInputs:
    images: np.ndarray  # uint8 (N, H, W, C)
    regenerate: np.ndarray | None  # bool (N, H, W): where the mask regenerates; None: no mask


def read_edit_inputs(cfg: EditConfig) -> EditInputs:
    """The images and masks of an edit, read and checked (before any output is looked at)."""
    shape = image_shape_of(cfg.sampling.checkpoint)
    images = read_inputs(cfg.sources, shape, cfg.resize, cfg.limit)
    regenerate = None if cfg.mask is None else read_masks(cfg.mask, images.shape[0], shape, cfg.resize)
    return EditInputs(images, regenerate)


def run_edit(cfg: EditConfig, inputs: EditInputs, sink: Sink, log: Log = log_line) -> float:
    """Edit every input into `sink`; returns the seconds spent editing."""
    n = inputs.images.shape[0]
    scfg = replace(cfg.sampling, n=n)
    loaded, rt = load(scfg)
    model, schedule, param, info = loaded
    spec, spacing = lookup(scfg.sampler_name), scfg.spacing or "trailing"
    steps = scfg.steps_for(schedule.T)
    samplers.check_options(spec.name, param, spacing, eta=scfg.eta, variance=scfg.variance)
    chain = samplers.Chain.make(schedule.betas.numpy(), steps, spacing)
    strength = cfg.strength_value
    k = start_index(chain, strength, schedule.T)
    c, h, w = loaded.image_shape
    what = (f"inpainting {n} images (white in {cfg.mask}: regenerated"
            + (f", RePaint resampling x{cfg.resample}" if cfg.resample else ", replacement") + ")"
            if inputs.regenerate is not None else f"editing {n} images")
    if k is None:
        log(f"{what}: strength {strength:g} is below the first step of this {steps}-step chain; the inputs "
            "are written unchanged")
        for s in _batches(n, scfg.batch_size):
            sink.add(inputs.images[s])
        return 0.0
    classes = loaded.classes
    plan = class_plan(scfg, classes, default_null=True)
    guide = load_guide(scfg, loaded, rt)
    null = len(classes) if classes is not None else 0
    calls, weak = scfg.network_calls(spec.name, steps, schedule.betas.numpy(), spacing, start=k,
                                     resample=cfg.resample)
    guided = f"; {guide.what}, {weak} of them the guide's" if guide is not None else ""
    log(f"{what} of {w}x{h}x{c} with {scfg.checkpoint} (step {info.get('step', '?')}, {param}, "
        f"{scfg.weights} weights): strength {strength:g}, from t = {int(chain.timesteps[k])} of "
        f"{schedule.T}: "
        f"{k + 1} of {steps} {spec.name} steps ({calls} network calls/image{guided}), {rt.describe()}")
    if plan is not None:
        sink.label(plan, classes)
    model_fn = rt.model_fn(model)
    seeds = image_seeds(scfg)
    start = time.perf_counter()
    with progress_bar("editing", len(_batches(n, scfg.batch_size)) * (k + 1)) as bar:
        for s in _batches(n, scfg.batch_size):
            y = None if plan is None else torch.tensor(plan[s], device=rt.device)
            guidance = guide.guidance(scfg, y, null) if guide is not None else None
            regen = None if inputs.regenerate is None else inputs.regenerate[s]
            keep = None if regen is None else torch.from_numpy(~regen[:, None]).to(torch.float64)  # (B,1,H,W)
            x = edit(model_fn, schedule, param, from_uint8(inputs.images[s]), seeds[s], strength, keep=keep,
                     resample=cfg.resample, sampler=spec.name, steps=steps, spacing=spacing, eta=scfg.eta,
                     variance=scfg.variance, device=rt.device, clip_x0=scfg.clip is not False, cond=y,
                     guidance=guidance, callback=lambda _: bar.advance())
            out = to_uint8(x)  # (B, H, W, C)
            if regen is not None:  # the kept pixels are the input's, to the bit
                out = np.where(regen[..., None], out, inputs.images[s])
            sink.add(out)
    elapsed = time.perf_counter() - start
    log(f"edited {n} images in {elapsed:.1f} s ({elapsed / n:.3f} s/image)")
    return elapsed


# --------------------------------------------------------------------------------------------- invert
@dataclass(frozen=True)
class InvertConfig:
    """One `dtools invert` run: the chain (--steps, --spacing, --clip), classes, runtime, and the inputs."""

    sampling: SampleConfig  # its sampler is LATENT_SAMPLER: the chain DDIM decodes along
    sources: tuple[str, ...]
    resize: bool = False
    limit: int | None = None
    refine: int = 0  # fixed-point iterations per step

    def check(self) -> None:
        require_chain(self.sampling.checkpoint, "invert")
        if self.refine < 0:
            raise OptionError("--refine", f"must be >= 0, got {self.refine}")
        self.sampling.check()


def invert_images(cfg: SampleConfig, loaded: LoadedModel, rt: Runtime, images: np.ndarray, refine: int,
                  log: Log, what: str) -> np.ndarray:
    """x_T float64 [N, C, H, W] of uint8 images [N, H, W, C] (the loaded model's), by DDIM run forward."""
    n = images.shape[0]
    cfg = replace(cfg, n=n)
    model, schedule, param, info = loaded
    spacing = cfg.spacing or "trailing"
    steps = latent_steps(cfg, schedule.T)
    samplers.Chain.make(schedule.betas.numpy(), steps, spacing)  # --steps out of range: fail now
    plan = class_plan(cfg, loaded.classes, default_null=True)
    drawn = "" if plan is None else f", class {_class_name(plan, loaded.classes)}"
    log(f"inverting {what} of {images.shape[2]}x{images.shape[1]}x{images.shape[3]} with {cfg.checkpoint} "
        f"(step {info.get('step', '?')}, {param}, {cfg.weights} weights){drawn}: DDIM forward along "
        f"{steps} {spacing} steps ({steps * (1 + refine)} network calls/image), {rt.describe()}")
    model_fn = rt.model_fn(model)
    out = []
    with progress_bar("inverting", len(_batches(n, cfg.batch_size)) * steps) as bar:
        for s in _batches(n, cfg.batch_size):
            y = None if plan is None else torch.tensor(plan[s], device=rt.device)
            x = from_uint8(images[s]).to(rt.device)
            x_T = invert(model_fn, schedule, param, x, steps=steps, spacing=spacing,
                         clip_x0=cfg.clip is not False, cond=y, refine=refine,
                         callback=lambda _: bar.advance())
            if not torch.isfinite(x_T).all():
                raise DtoolsError("inversion produced NaN or infinite values: the model's output is not "
                                  "finite")
            out.append(x_T.cpu().numpy())
    return np.concatenate(out)


def _class_name(plan: list[int], classes: tuple[str, ...]) -> str:
    used = sorted(set(plan))
    names = ["none (the null class)" if c == len(classes) else f"{c} ({classes[c]})" for c in used]
    return names[0] if len(names) == 1 else ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")


def run_invert(cfg: InvertConfig, images: np.ndarray, output: str | None, force: bool,
               log: Log = log_line) -> np.ndarray:
    """Invert `images` and write their x_T as float32 [N, C, H, W] to `output` (.npy; None/'-': stdout)."""
    start = time.perf_counter()
    loaded, rt = load(cfg.sampling)
    latents = invert_images(cfg.sampling, loaded, rt, images, cfg.refine, log, f"{images.shape[0]} images")
    latents = latents.astype(np.float32)
    write_npy(latents, output, force)
    elapsed = time.perf_counter() - start
    where = "stdout" if is_stdio(output) else output
    steps = f" --steps {cfg.sampling.steps}" if cfg.sampling.steps is not None else ""
    log(f"wrote {latents.shape[0]} latents {list(latents.shape)} float32 to {where} in {elapsed:.1f} s; "
        f"decode with: dtools sample {cfg.sampling.checkpoint} --from-latents FILE{steps}")
    return latents


# ---------------------------------------------------------------------------------------- interpolate
@dataclass(frozen=True)
class InterpolateConfig:
    """One `dtools interpolate` run: the decoding options (sampling: sampler, steps, class, runtime),
    and the two ends, two images (inverted first) or two seeds."""

    sampling: SampleConfig  # n: the number of frames, both ends included
    sources: tuple[str, ...] = ()
    seeds: tuple[int, int] | None = None
    resize: bool = False
    refine: int = 0

    def check(self) -> None:
        require_chain(self.sampling.checkpoint, "interpolate")
        if (self.seeds is None) == (not self.sources):
            raise DtoolsError("give two images (A B) or --seeds S,T, not both" if self.sources
                              else "give two images (A B) or --seeds S,T for the two ends")
        if self.sampling.n < 2:
            raise OptionError("-n", f"needs at least 2 frames (the two ends), got {self.sampling.n}")
        if self.refine < 0:
            raise OptionError("--refine", f"must be >= 0, got {self.refine}")
        if self.sampling.classes is not None and len(self.sampling.classes) > 1:
            raise DtoolsError("--class: interpolate draws every frame of one class; give it once")
        if self.sampling.per_class is not None:
            raise DtoolsError("--per-class does not apply to interpolate; give --class")
        spec = lookup(self.sampling.sampler_name)
        if not spec.is_deterministic(self.sampling.eta):
            raise DtoolsError(f"interpolate: --sampler {spec.name}{' --eta' if self.sampling.eta else ''} "
                              f"draws fresh noise at every step, so frames would not follow the path; use "
                              f"{deterministic_samplers()}")
        self.sampling.check()


def parse_seeds(text: str) -> tuple[int, int]:
    """--seeds S,T -> (S, T), two seeds >= 0."""
    try:
        a, b = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise OptionError("--seeds", f"expects two seeds like 3,7, got {text!r}") from None
    if a < 0 or b < 0:
        raise OptionError("--seeds", f"seeds are >= 0, got {text!r}")
    return a, b


def read_ends(cfg: InterpolateConfig) -> np.ndarray | None:
    """The two end images, uint8 [2, H, W, C] (checked before any output is looked at); None for seeds."""
    if cfg.seeds is not None:
        return None
    images = read_inputs(cfg.sources, image_shape_of(cfg.sampling.checkpoint), cfg.resize)
    if images.shape[0] != 2:
        raise DtoolsError(f"{', '.join(cfg.sources)}: {images.shape[0]} images; interpolate walks between "
                          "exactly two")
    return images


def run_interpolate(cfg: InterpolateConfig, ends: np.ndarray | None, sink: Sink,
                    log: Log = log_line) -> float:
    """Write cfg.sampling.n frames from one end to the other into `sink`; returns the seconds spent."""
    n = cfg.sampling.n
    scfg = replace(cfg.sampling, n=2)
    shape = image_shape_of(scfg.checkpoint)
    start = time.perf_counter()
    loaded, rt = load(scfg)
    if ends is None:
        # the x_T of image 0 of `dtools sample --seed S`: its generator's first draw
        a, b = (samplers.ImageNoise([samplers.image_seed(s, 0)], shape)() for s in cfg.seeds)
        how = f"seeds {cfg.seeds[0]} and {cfg.seeds[1]}"
    else:
        x_T = torch.from_numpy(invert_images(scfg, loaded, rt, ends, cfg.refine, log, "the two ends"))
        a, b = x_T[:1], x_T[1:]
        how = f"{' and '.join(cfg.sources)} (inverted)"
    latents = frames(a, b, n).float().numpy()  # (n, C, H, W), float32 as `dtools invert` writes them
    model, schedule, param, info = loaded
    spec, spacing = lookup(scfg.sampler_name), scfg.spacing or "trailing"
    steps = latent_steps(scfg, schedule.T)
    samplers.check_options(spec.name, param, spacing, eta=scfg.eta, variance=scfg.variance)
    fcfg = replace(scfg, n=n)
    plan = class_plan(fcfg, loaded.classes, default_null=True)
    log(f"interpolating {n} frames between {how} by slerp of x_T, decoded by {spec.name} along {steps} steps "
        f"({spec.nfe(steps)} network calls/frame)")
    seeds = [samplers.image_seed(scfg.seed, i) for i in range(n)]
    model_fn = rt.model_fn(model)
    with progress_bar("decoding", len(_batches(n, scfg.batch_size)) * steps) as bar:
        for s in _batches(n, scfg.batch_size):
            y = None if plan is None else torch.tensor(plan[s], device=rt.device)
            x = samplers.generate(model_fn, schedule, param, shape, seeds[s], sampler=spec.name, steps=steps,
                                  spacing=spacing, eta=scfg.eta, variance=scfg.variance, device=rt.device,
                                  clip_x0=scfg.clip is not False, cond=y, callback=lambda _: bar.advance(),
                                  x_T=torch.from_numpy(latents[s]))
            sink.add(to_uint8(x))
    elapsed = time.perf_counter() - start
    log(f"interpolated {n} frames in {elapsed:.1f} s")
    return elapsed
