"""`dtools sample`: draw images from a trained model checkpoint with a chosen sampler."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from dtools.errors import DtoolsError
from dtools.fileio import check_writable, is_stdio, refuse_terminal

# Kept in step with dtools.samplers.SAMPLERS and dtools.diffusion (tests/cli/test_sample.py checks);
# listed here so that `dtools --help` does not import torch.
SAMPLER_HELP = {
    "ddpm": "ancestral, 1 call/step, the seed's sampler (default --steps T)",
    "ddim": "DDIM with --eta, 1 call/step",
    "dpm++2m": "DPM-Solver++(2M), 1 call/step, good at 10-50 steps",
    "heun": "Heun (Karras et al.), 2 calls/step",
}


def sample(
    checkpoint: Path = typer.Argument(
        ..., metavar="CKPT", help="Model checkpoint written by `dtools train` (RUN/model.safetensors)."
    ),
    n: int = typer.Option(64, "-n", "--num", min=1, help="Number of images."),
    sampler: str = typer.Option(
        "dpm++2m", "--sampler", "-s", help="; ".join(f"{k}: {v}" for k, v in SAMPLER_HELP.items()) + "."
    ),
    steps: int = typer.Option(
        None, "--steps", help="Timesteps visited, 2..T: network calls per image (heun: 2*steps-2). "
        "[default: T for ddpm, 20 otherwise]"
    ),
    seed: int = typer.Option(0, "--seed", help="Image i depends only on (seed, i), never on --batch-size."),
    eta: float = typer.Option(
        None, "--eta", help="ddim only: noise scale, 0 = deterministic, 1 = ddpm's posterior variance. "
        "[default: 0]"
    ),
    variance: str = typer.Option(
        None, "--variance", help="ddpm only: reverse variance beta (β_t) or posterior (β̃_t). "
        "[default: posterior]"
    ),
    spacing: str = typer.Option(
        "trailing", "--spacing", help="Which timesteps a --steps < T chain keeps: trailing (starts at T-1), "
        "linspace (both ends), leading (DDIM's original)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per network call (memory)."),
    weights: str = typer.Option("ema", "--weights", help="ema, or raw: the online weights, without EMA."),
    output: str = typer.Option(
        None, "-o", "--output", help="A folder for PNGs 000000.png..., or a .npy file. "
        "[default: .npy to stdout]"
    ),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing output files."),
    trajectory: int = typer.Option(
        None, "--trajectory", min=2, help="Write K snapshots of x_t and of the predicted x0 along the chain "
        "instead of final images: per image one row of x_t, then one of x0_hat (view with grid --nrow K)."
    ),
    clip: bool = typer.Option(True, "--clip/--no-clip", help="Clip each predicted x0 to [-1, 1]."),
    device: str = typer.Option("auto", "--device", help="auto (cuda, then mps, then cpu), cpu, cuda, mps."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto, fp32, bf16, fp16. auto: bf16 on a CUDA GPU (fp16 on older ones), "
        "fp32 on the CPU."
    ),
    compile_model: bool = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the network. "
        "[default: on for CUDA, off on the CPU]"
    ),
) -> None:
    """Draw images from a trained checkpoint: uint8 .npy [N,H,W,C] on stdout, or PNGs with -o DIR.

    The model, its schedule and parameterization come from the checkpoint alone. Defaults: the
    EMA weights, dpm++2m with 20 network calls per image. `--sampler ddpm` is the seed's exact
    T-step ancestral sampler. Image i is the same for a given --seed whatever --batch-size or -n.

    \b
    Examples:
      dtools sample runs/emoji/model.safetensors | dtools grid -o samples.png
      dtools sample runs/emoji/model.safetensors -n 16 --sampler ddpm --variance beta -o ddpm/
      dtools sample ckpt.safetensors -n 10000 --steps 50 -o fid-samples/ && dtools fid fid-samples/ data/
      dtools sample ckpt.safetensors -n 4 --sampler ddpm --trajectory 8 | dtools grid --nrow 8 -o chain.png
    """
    import torch

    from dtools import samplers
    from dtools.images import to_uint8

    if sampler not in samplers.SAMPLERS:
        raise DtoolsError(f"unknown sampler {sampler!r}; choose one of {', '.join(samplers.SAMPLERS)}")
    if eta is not None and sampler != "ddim":
        raise DtoolsError(f"--eta applies to --sampler ddim, not {sampler}")
    if variance is not None and sampler != "ddpm":
        raise DtoolsError(f"--variance applies to --sampler ddpm, not {sampler}")
    # refuse a bad target before any work
    sink = _Sink(output, n * 2 * trajectory if trajectory else n, force)

    (model, schedule, param, info), rt = _load(checkpoint, weights, device, precision, compile_model)
    dev = rt.device
    steps = steps if steps is not None else (schedule.T if sampler == "ddpm" else 20)
    if trajectory is not None and trajectory > steps + 1:
        raise DtoolsError(f"--trajectory {trajectory}: the chain has only {steps + 1} states to show")
    eta, variance = eta or 0.0, variance or "posterior"
    samplers.check_options(sampler, param, spacing, eta, variance)
    samplers.Chain.make(schedule.betas.numpy(), steps, spacing)  # --steps out of range: fail now
    opts = dict(sampler=sampler, steps=steps, spacing=spacing, eta=eta, variance=variance)
    cfg = model.cfg
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with rt.autocast():
            return model(x_t, t).float()

    calls = samplers.NFE[sampler](steps)
    typer.echo(
        f"sampling {n} {'trajectories' if trajectory else 'images'} of {shape[1]}x{shape[2]}x{shape[0]} from "
        f"{checkpoint} (step {info.get('step', '?')}, {param}, {weights} weights): {sampler}, {steps} steps "
        f"({calls} network calls/image), {rt.describe()}",
        err=True,
    )
    seeds = [samplers.image_seed(seed, i) for i in range(n)]
    batches = [seeds[i:i + batch_size] for i in range(0, n, batch_size)]
    start = time.perf_counter()
    with _progress(len(batches) * steps) as advance:
        for batch in batches:
            snaps = _Snapshots(trajectory, steps) if trajectory else None

            def on_step(event: dict, snaps=snaps) -> None:
                if snaps is not None:
                    snaps.take(event)
                advance()

            x = samplers.generate(model_fn, schedule, param, shape, batch, device=dev, clip_x0=clip,
                                  callback=on_step, **opts)
            images = to_uint8(x)  # (B, H, W, C)
            sink.add(snaps.finish(images) if snaps is not None else images)
    elapsed = time.perf_counter() - start
    what = "trajectories" if trajectory else "images"
    typer.echo(f"sampled {n} {what} in {elapsed:.1f} s ({elapsed / n:.3f} s/image)", err=True)
    if snaps is not None:
        cols = ", ".join(map(str, snaps.columns))
        typer.echo(f"trajectory columns: t = {cols} (x0 = the final image); rows per image: x_t, then "
                   "predicted x0", err=True)
    sink.close()


def _load(checkpoint: Path, weights: str, device: str, precision: str, compile_model: bool | None):
    """The network from the checkpoint, on the chosen device, compiled if asked."""
    from dtools import runtime
    from dtools.checkpoint import load_model

    rt = runtime.resolve(device, precision, compile_model)
    loaded = load_model(checkpoint, weights, rt.device)
    if rt.compile:
        loaded.network.compile()
    return loaded, rt


class _Snapshots:
    """Collects K states of one batch for --trajectory: x_t and x0_hat at evenly spaced steps.

    The chain has `steps` states before its last update plus the final image; column j shows state
    round(j * steps / (K - 1)), so the first column is x_T and the last the final image.
    """

    def __init__(self, k: int, steps: int):
        import numpy as np

        assert 2 <= k <= steps + 1, (k, steps)
        self.pick = [int(s) for s in np.round(np.linspace(0, steps, k))]
        self.x, self.x0, self.columns = {}, {}, [None] * k

    def take(self, event: dict) -> None:
        from dtools.images import to_uint8

        if event["step"] in self.pick:
            self.x[event["step"]] = to_uint8(event["x"])  # (B, H, W, C); x_t beyond [-1, 1] is clipped
            self.x0[event["step"]] = to_uint8(event["x0_hat"])
            self.columns[self.pick.index(event["step"])] = event["t"]

    def finish(self, images):
        """The batch's snapshots as uint8 (B * 2 * K, H, W, C), given its final images (B, H, W, C)."""
        import numpy as np

        last = self.pick[-1]
        self.x.setdefault(last, images)
        self.x0.setdefault(last, images)
        self.columns[-1] = self.columns[-1] if self.columns[-1] is not None else "x0"
        xs = np.stack([self.x[s] for s in self.pick], axis=1)  # (B, K, H, W, C)
        x0s = np.stack([self.x0[s] for s in self.pick], axis=1)  # (B, K, H, W, C)
        rows = np.stack([xs, x0s], axis=1)  # (B, 2, K, H, W, C): per image a row of x_t, then of x0_hat
        return rows.reshape(-1, *rows.shape[3:])  # (B * 2 * K, H, W, C)


class _Sink:
    """Where the images go: stdout (.npy), a .npy file, or a PNG folder; checked before sampling."""

    def __init__(self, output: str | None, count: int, force: bool):
        self.output, self.force, self.parts, self.written = output, force, [], 0
        if is_stdio(output):
            self.kind = "stdout"
            refuse_terminal(
                output,
                "refusing to write binary .npy images to a terminal; pipe them (`| dtools grid -o "
                "out.png`), redirect (`> samples.npy`) or pass -o DIR for PNG files",
            )
        elif output.lower().endswith(".npy"):
            self.kind = "npy"
            check_writable(output, force)
        else:
            self.kind = "png"
            folder = Path(output)
            if folder.exists() and not folder.is_dir():
                raise DtoolsError(f"{folder} exists and is not a folder")
            width = max(6, len(str(count - 1)))
            clash = next((p for i in range(count) if (p := folder / f"{i:0{width}d}.png").exists()), None)
            if clash is not None and not force:
                raise DtoolsError(f"{clash} already exists; pass --force to overwrite, or choose another "
                                  "folder")

    def add(self, batch) -> None:
        if self.kind == "png":  # written as they come, so an interrupted run keeps its finished images
            from dtools.images import write_png_folder

            write_png_folder(batch, self.output, force=True, start=self.written)
        else:
            self.parts.append(batch)
        self.written += batch.shape[0]

    def close(self) -> None:
        import numpy as np

        from dtools.fileio import write_npy

        if self.kind == "png":
            typer.echo(f"wrote {self.written} PNGs to {self.output.rstrip('/')}/", err=True)
            if self.force:
                self._remove_stale()
            return
        write_npy(np.concatenate(self.parts), None if self.kind == "stdout" else self.output, self.force)
        if self.kind == "npy":
            typer.echo(f"wrote {self.output}", err=True)


    def _remove_stale(self) -> None:
        """With --force, drop higher-numbered samples of an earlier, larger run from the folder, so that
        it holds exactly this run's images (a later `dtools fid` must not score stale ones)."""
        stale = [
            p for p in Path(self.output).glob("*.png")
            if re.fullmatch(r"\d{6,}", p.stem) and int(p.stem) >= self.written
        ]
        for p in stale:
            p.unlink()
        if stale:
            typer.echo(f"removed {len(stale)} higher-numbered PNGs of an earlier run (--force)", err=True)


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[], None]]:
    """A per-step rich progress bar on stderr (shown only when stderr is a terminal); yields `advance`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("sampling", total=total)
        yield lambda: bar.advance(task)
