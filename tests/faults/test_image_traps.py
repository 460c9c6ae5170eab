"""Image files that are traps (docs/formats.md, "Hostile and corrupt files"): a decompression bomb, a
truncated or corrupt PNG, a JPEG without its end marker, a file nobody may read, a text file named .png,
symlink loops. Every reader of an image folder skips them with one warning that counts them, or refuses
in one line when nothing is usable, within seconds."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dtools.cli import app
from dtools.errors import DtoolsError
from dtools.images import list_image_files, load_image, open_source, probe_image

SECONDS = 10
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root reads a chmod 000 file anyway


def make_tiny_pngs(folder: Path, n: int) -> None:
    """n 8x8 RGB PNGs of distinct colours, 000000.png ... (the readable images beside the traps)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (40 * i, 255 - 40 * i, 100)).save(folder / f"{i:06d}.png")


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 100_000) -> bytes:
    """A valid PNG header declaring side x side RGB pixels, with a few bytes of image data: decoding it
    would need 30 GB."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bad_crc_png() -> bytes:
    raw = bytearray(png_bytes(1))
    i = raw.index(b"IDAT") + 6  # a byte of the compressed data; the chunk's CRC no longer matches
    raw[i] ^= 0xFF
    return bytes(raw)


def jpeg_without_end() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[:-40]


TRAPS = {
    "bomb.png": bomb_png,
    "truncated.png": lambda: png_bytes(3)[:-30],
    "bad_crc.png": bad_crc_png,
    "no_end.jpg": jpeg_without_end,
    "text.png": lambda: b"just some words, not an image\n",
    "empty.png": lambda: b"",
}


def trap_folder(root: Path, good: int = 4) -> Path:
    """`good` tiny 8x8 PNGs, every trap of TRAPS, a symlink loop of folders and of files, a dangling link."""
    make_tiny_pngs(root, good)
    for name, make in TRAPS.items():
        (root / name).write_bytes(make())
    (root / "loop").symlink_to(root, target_is_directory=True)  # root/loop/loop/... never followed
    (root / "self.png").symlink_to(root / "self.png")  # a link to itself: ELOOP
    (root / "gone.png").symlink_to(root / "missing.png")
    return root


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def test_probe_names_each_trap_and_passes_good_files(tmp_path):
    root = trap_folder(tmp_path / "t")
    for name in TRAPS:
        assert probe_image(root / name) is not None, name
    assert "more than 8192x8192 pixels" in probe_image(root / "bomb.png")
    assert "end-of-image" in probe_image(root / "no_end.jpg")
    assert probe_image(root / "000000.png") is None
    (root / "9000.png").write_bytes(bomb_png(9000))  # over dtools' limit, under Pillow's own
    assert "9000x9000 pixels, more than 8192x8192" in probe_image(root / "9000.png")
    with pytest.raises(DtoolsError, match=r"bomb\.png: cannot read image \(more than 8192x8192 pixels"):
        load_image(root / "bomb.png")


def test_a_folder_with_traps_keeps_its_good_images_with_one_warning(tmp_path, capsys):
    root = trap_folder(tmp_path / "t")
    t0 = time.perf_counter()
    files = list_image_files(root)
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(4)]
    assert time.perf_counter() - t0 < SECONDS
    lines = warning_lines(capsys.readouterr().err)
    want = f"warning: {root}: skipped {len(TRAPS)} of {len(TRAPS) + 4} image files (first: "
    assert len(lines) == 1 and lines[0].startswith(want), lines
    src = open_source(str(root))  # what fid, nn and grid read
    assert src.count == 4 and len(list(src.images())) == 4


@pytest.mark.skipif(ROOT, reason="root reads a chmod 000 file")
def test_a_file_nobody_may_read_is_skipped(tmp_path, capsys):
    make_tiny_pngs(tmp_path / "d", 3)
    locked = tmp_path / "d" / "000001.png"
    locked.chmod(0)
    try:
        assert [f.name for f in list_image_files(tmp_path / "d")] == ["000000.png", "000002.png"]
        assert "PermissionError" in capsys.readouterr().err
    finally:
        locked.chmod(0o644)


def test_a_folder_of_traps_only_is_refused_in_one_line(tmp_path):
    root = tmp_path / "only"
    root.mkdir()
    for name, make in TRAPS.items():
        (root / name).write_bytes(make())
    with pytest.raises(DtoolsError, match=rf"none of its {len(TRAPS)} image files can be read \(first: "):
        list_image_files(root)


def run(*args) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    return result.exit_code, result.stderr, time.perf_counter() - t0


@pytest.mark.parametrize("command", ["grid", "prep", "noise"])
def test_commands_skip_traps_with_one_warning(tmp_path, command):
    root = trap_folder(tmp_path / "t")
    args = {"grid": ["grid", root, "-o", tmp_path / "g.png"],
            "prep": ["prep", root, tmp_path / "out", "--size", "8", "--jobs", "1"],
            "noise": ["noise", root, "-b", "linear", "-T", "10", "-t", "0,9", "-o", tmp_path / "n.npy"],
            }[command]
    code, err, seconds = run(*args)
    assert code == 0, err
    lines = warning_lines(err)
    assert len(lines) == 1 and f"skipped {len(TRAPS)} of {len(TRAPS) + 4} image files (first: " in lines[0]
    assert seconds < SECONDS


@pytest.mark.parametrize("command", ["grid", "prep"])
def test_commands_refuse_a_folder_of_traps(tmp_path, command):
    root = tmp_path / "only"
    root.mkdir()
    for name, make in TRAPS.items():
        (root / name).write_bytes(make())
    args = {"grid": ["grid", root, "-o", tmp_path / "g.png"],
            "prep": ["prep", root, tmp_path / "out", "--size", "8", "--jobs", "1"]}[command]
    code, err, seconds = run(*args)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and "first: " in lines[0], err
    assert seconds < SECONDS


def test_training_data_skips_traps_with_one_warning(tmp_path, capsys):
    from dtools.train.data import load_images, peek

    root = trap_folder(tmp_path / "t")
    assert peek(str(root)) == (4, 8, 8, 3)
    assert tuple(load_images(str(root)).shape) == (4, 3, 8, 8)
    assert len(warning_lines(capsys.readouterr().err)) == 1  # listed twice, warned once


def test_a_single_bomb_file_is_refused(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    code, err, seconds = run("grid", tmp_path / "bomb.png", "-o", tmp_path / "g.png")
    assert code == 1 and err.startswith("Error: ") and "more than 8192x8192 pixels" in err
    assert seconds < SECONDS
