"""Image batches as uint8 arrays [N, H, W, C] (C = 1 or 3), read from and written to plain files.

Sources a command accepts: ``-`` (a `.npy` batch on stdin), a `.npy` file, an image file, or a
folder of images (searched recursively, sorted by path so the order is stable). `open_source` opens
one lazily (a folder's images are read batch by batch); `read_source` and `read_images` stack them.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dtools.errors import DtoolsError, first_line
from dtools.fileio import atomic_write_bytes, is_stdio, read_npy

# Extensions Pillow can open; anything else in a folder is ignored (not an error).
IMAGE_EXTS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
) | {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


# The most pixels dtools decodes from one image file: a larger header (a PNG declaring 100000x100000) is a
# decompression bomb, refused from its header before any pixel is decoded
MAX_SIDE = 8192
MAX_PIXELS = MAX_SIDE * MAX_SIDE
_warned: set[str] = set()  # folders whose skipped files were reported (train lists its data three times)


def list_image_files(folder: str | os.PathLike, check: bool = True) -> list[Path]:
    """Image files under `folder`, recursively, sorted; hidden files and folders are skipped, and so are
    symlinked folders (never followed: a link loop cannot trap the walk). With `check`, files that cannot
    be read (`probe_image`) are left out with one warning that counts them; none readable is an error."""
    root = Path(folder)
    files = []
    for here, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(here) / n for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTS]
    files = sorted(f for f in files if f.is_file())  # a link to a file counts; a dangling or looping one not
    return usable_files(root, files) if check else files


def usable_files(root: Path, files: list[Path]) -> list[Path]:
    """`files` without those `probe_image` refuses; one warning line names the count and the first
    (once per folder), and an error says so when none is left."""
    bad = [(f, why) for f in files if (why := probe_image(f)) is not None]
    if not bad:
        return files
    first = f"{bad[0][0].relative_to(root) if bad[0][0].is_relative_to(root) else bad[0][0]}: {bad[0][1]}"
    if len(bad) == len(files):
        raise DtoolsError(f"{root}: none of its {len(files)} image files can be read (first: {first})")
    if str(root) not in _warned:
        _warned.add(str(root))
        from dtools.progress import log

        log(f"warning: {root}: skipped {len(bad)} of {len(files)} image files (first: {first})")
    skipped = {f for f, _ in bad}
    return [f for f in files if f not in skipped]


def probe_image(path: str | os.PathLike) -> str | None:
    """Why an image file cannot be used, or None. Checked without decoding its pixels: that Pillow can
    open it and read it (a file you may not read, a symlink loop), its size from the header (at most
    MAX_PIXELS), a PNG's chunks and their CRCs to the end (a truncated or corrupt PNG), a JPEG's end
    marker (a truncated JPEG). What slips through still fails when decoded, as a one-line error."""
    try:
        with open_image(path) as img:
            fmt = img.format
            img.verify()
        if fmt == "JPEG":  # its last scan (after the last SOS marker) must be followed by EOI
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
                tail = f.read()
            if b"\xff\xd9" not in tail[tail.rfind(b"\xff\xda") + 1:]:
                return "truncated JPEG (no end-of-image marker)"
    except DtoolsError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 (Pillow raises OSError, ValueError, SyntaxError, struct.error, ...)
        return f"{type(e).__name__}: {first_line(e)[:120]}" if str(e).strip() else type(e).__name__
    return None


def too_big(img: Image.Image) -> None:
    """Refuse an image whose header declares more than MAX_PIXELS, before anything is decoded."""
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise DtoolsError(f"{w}x{h} pixels, more than {MAX_SIDE}x{MAX_SIDE} (a decompression bomb)")


def to_array(
    img: Image.Image, channels: int | None = None, background: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """A PIL image of any mode as uint8 [H, W, C]; transparency is composited onto `background`.

    `channels` forces 1 (luminance) or 3 (RGB); None keeps grey images grey and makes the rest RGB.
    """
    img.load()
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    grey = img.mode in ("L", "1", "LA", "La", "I;16", "I;16B", "I;16L", "I", "F")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        # 16-bit modes always span 0..65535; "I"/"F" carry no bit depth, so guess from the values.
        hi = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and a.max() > 255) else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        img = Image.alpha_composite(base, rgba).convert("RGB")
    want = channels if channels is not None else (1 if grey else 3)
    img = img.convert("L" if want == 1 else "RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def open_image(path: str | os.PathLike) -> Image.Image:
    """Image.open with the size from its header checked (`too_big`): a decompression bomb is a DtoolsError
    (with Pillow's own warning or error about one turned into it, so no stray warning line appears)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise DtoolsError(f"more than {MAX_SIDE}x{MAX_SIDE} pixels (a decompression bomb)") from None
    try:
        too_big(img)
    except DtoolsError:
        img.close()
        raise
    return img


def load_image(path: str | os.PathLike, channels: int | None = None) -> np.ndarray:
    try:
        with open_image(path) as img:
            return to_array(img, channels)
    except DtoolsError as e:
        raise DtoolsError(f"{path}: cannot read image ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
        raise DtoolsError(f"{path}: cannot read image ({type(e).__name__}: {first_line(e)[:120]})") from None


def validate_batch(arr: np.ndarray, name: str) -> np.ndarray:
    """Check an image batch array: uint8 [N, H, W, C] with C in {1, 3}; [N, H, W] gets C = 1."""
    if arr.dtype != np.uint8:
        raise DtoolsError(f"{name}: image batches must be uint8 [N,H,W,C], got dtype {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise DtoolsError(
            f"{name}: image batches must be [N,H,W,C] with C = 1 or 3, got shape {list(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise DtoolsError(f"{name}: the batch holds no images")
    return arr


NO_IMAGES_HINT = " (looked for .jpg, .png, .webp …)"


@dataclass
class ImageSource:
    """One opened source (see module doc): its name, its number of images, and a way to read them.

    A `.npy` batch or a single image file is read when it is opened (`array`); a folder is only
    listed (`files`), and each of its images is read when `images` or `batches` reaches it.
    """

    name: str  # "stdin" or the path as given
    count: int
    array: np.ndarray | None = None  # uint8 [N, H, W, C]: the whole batch, already read
    files: list[Path] | None = None  # a folder's image files, read lazily
    channels: int | None = None  # what each file is converted to (see `to_array`)

    def images(self) -> Iterator[np.ndarray]:
        """Every image in order, one uint8 [H, W, C] at a time."""
        if self.files is None:
            yield from self.array
        else:
            for f in self.files:
                yield load_image(f, self.channels)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 [B, H, W, C] batches of at most `batch_size` images, in order. A batch must share one
        size, so a folder's images of different sizes are split into runs of equal shape."""
        if self.files is None:
            for i in range(0, self.count, batch_size):
                yield self.array[i : i + batch_size]
            return
        images = self.images()
        while chunk := list(itertools.islice(images, batch_size)):
            for _, run in itertools.groupby(chunk, key=lambda im: im.shape):
                yield np.stack(list(run))


def open_source(
    source: str, channels: int | None = None, limit: int | None = None, empty_hint: str = NO_IMAGES_HINT
) -> ImageSource:
    """Open one source (see module doc) with at most `limit` images; a folder with none is an error
    "no images found" + `empty_hint`. Arrays are checked (`validate_batch`) and matched to `channels`."""
    source = str(source)
    name = "stdin" if is_stdio(source) else source
    p = Path(source)
    if not is_stdio(source) and p.is_dir():  # a folder, even one named like a .npy file
        files = list_image_files(p, check=False)
        if not files:
            raise DtoolsError(f"{p}: no images found{empty_hint}")
        files = usable_files(p, files[:limit])  # only the files a --limit reads are opened
        return ImageSource(name, len(files), files=files, channels=channels)
    if is_stdio(source) or source.lower().endswith(".npy"):
        arr = match_channels(validate_batch(read_npy(source), name)[:limit], channels)
        return ImageSource(name, len(arr), array=arr)
    if not p.exists():
        raise DtoolsError(f"{p}: no such file or folder")
    arr = load_image(p, channels)[None]
    return ImageSource(name, 1, array=arr)


def read_source(source: str, channels: int | None = None, limit: int | None = None) -> np.ndarray:
    """One source (see module doc) as a uint8 batch [N, H, W, C]; at most `limit` images, and from a
    folder only the first `limit` files are opened."""
    src = open_source(source, channels, limit)
    if src.files is None:
        return src.array
    return stack(list(src.images()), src.files)


def read_images(sources: Iterable[str], channels: int | None = None, limit: int | None = None) -> np.ndarray:
    """All sources concatenated in order; they must agree in size (use `dtools prep` first if not).

    With `limit`, reading stops after that many images (sources past it are not opened).
    """
    sources = [str(s) for s in sources]
    if limit is not None and limit < 1:
        raise DtoolsError(f"--limit must be a positive integer, got {limit}")
    batches: list[np.ndarray] = []
    for s in sources:
        left = None if limit is None else limit - sum(b.shape[0] for b in batches)
        if left == 0:
            break
        batches.append(read_source(s, channels, left))
    if not batches:
        raise DtoolsError("no image sources given")
    if channels is None and len({b.shape[-1] for b in batches}) > 1:
        batches = [match_channels(b, 3) for b in batches]
    return stack_batches(batches, sources[: len(batches)])


def match_channels(arr: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None or arr.shape[-1] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=-1)
    # RGB → luminance with ITU-R 601-2 weights, as PIL's convert("L")
    lum = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(lum + 0.5, 0, 255).astype(np.uint8)[..., None]


def stack(images: list[np.ndarray], names: list) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        first = images[0].shape
        odd = next(n for n, im in zip(names, images, strict=True) if im.shape != first)
        raise DtoolsError(
            f"images differ in size ({names[0]} is {first[1]}x{first[0]}, {odd} is not); "
            "run `dtools prep SRC OUT --size N` first"
        )
    return np.stack(images)


def stack_batches(batches: list[np.ndarray], names: list[str]) -> np.ndarray:
    if len({b.shape[1:] for b in batches}) > 1:
        desc = ", ".join(f"{n}: {list(b.shape[1:])}" for n, b in zip(names, batches, strict=True))
        raise DtoolsError(f"image sources differ in size ({desc})")
    return np.concatenate(batches) if len(batches) > 1 else batches[0]


# The one naming rule of numbered image folders (prep's output, sample -o DIR): 000000.png, 000001.png,
# ... zero-padded to at least six digits, so that `ls` order is image order.
NUMBERED_PNG = re.compile(r"^\d{6,}\.png$")


def numbered_png(i: int, count: int) -> str:
    """The name of image i in a folder of `count` numbered images."""
    return f"{i:0{max(6, len(str(count - 1)))}d}.png"


def numbered_index(path: str | os.PathLike) -> int | None:
    """The image number in a numbered PNG's name, or None for any other file name."""
    name = Path(path).name
    return int(name[:-4]) if NUMBERED_PNG.match(name) else None


def png_bytes(arr: np.ndarray) -> bytes:
    """One uint8 [H, W, C] image encoded as PNG (grey for C = 1)."""
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def save_png(arr: np.ndarray, path: str | os.PathLike, force: bool = False) -> None:
    """One uint8 [H, W, C] image as a PNG, atomically."""
    atomic_write_bytes(path, png_bytes(arr), force)


def write_png_folder(
    batch: np.ndarray, folder: str | os.PathLike, force: bool = False, start: int = 0,
    count: int | None = None,
) -> list[Path]:
    """Write a batch as images start, start+1, ... of a numbered folder of `count` images
    (default: just these), named by `numbered_png`."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise DtoolsError(f"{out} exists and is not a folder")
    count = start + batch.shape[0] if count is None else count
    paths = [out / numbered_png(start + i, count) for i in range(batch.shape[0])]
    if not force:
        clash = next((p for p in paths if p.exists()), None)
        if clash is not None:
            raise DtoolsError(f"{clash} already exists; pass --force to overwrite, or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    for p, im in zip(paths, batch, strict=True):
        save_png(im, p, force=True)
    return paths


def to_uint8(x) -> np.ndarray:
    """A float tensor (B, C, H, W) in [-1, 1] as uint8 [B, H, W, C]: clipped, then rounded to the
    nearest level, in float64 for a float64 tensor and in float32 otherwise."""
    import torch

    x = x.detach()
    x = x if x.dtype == torch.float64 else x.float()
    q = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return q.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(arr: np.ndarray):
    """uint8 [B, H, W, C] as a float32 tensor (B, C, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
