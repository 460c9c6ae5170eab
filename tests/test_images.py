"""dtools.images: every Pillow mode to uint8 [H,W,C], sources (folders, .npy, stdin, files), PNG
folders, and the uint8 <-> [-1, 1] tensor conversion."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dtools.errors import DtoolsError
from dtools.fileio import npy_bytes
from dtools.images import (
    from_uint8,
    list_image_files,
    load_image,
    match_channels,
    open_source,
    read_images,
    read_source,
    save_png,
    to_array,
    to_uint8,
    validate_batch,
    write_png_folder,
)


class FakeStdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    def isatty(self) -> bool:
        return False


# ---------------------------------------------------------------------------------------- modes
def test_rgb_unchanged():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = to_array(Image.fromarray(a))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, a)


def test_rgba_composited_on_white_exactly():
    # c·a + 255·(1-a) with a = 51/255 = 0.2: 200 -> 244, 100 -> 224, 0 -> 204;
    # a = 0 gives white, a = 255 the colour itself
    im = Image.new("RGBA", (3, 1))
    im.putdata([(200, 100, 0, 51), (10, 20, 30, 0), (10, 20, 30, 255)])
    np.testing.assert_array_equal(to_array(im)[0], [[244, 224, 204], [255, 255, 255], [10, 20, 30]])


def test_rgba_on_another_background():
    im = Image.new("RGBA", (1, 1), (200, 100, 0, 51))
    # c·0.2 + b·0.8 with b = (0, 0, 255): (40, 20, 204)
    np.testing.assert_array_equal(to_array(im, background=(0, 0, 255))[0, 0], [40, 20, 204])


def test_la_stays_grey_and_composites():
    im = Image.new("LA", (2, 1))
    im.putdata([(100, 51), (7, 255)])
    out = to_array(im)
    assert out.shape == (1, 2, 1)
    np.testing.assert_array_equal(out[0, :, 0], [224, 7])  # 100·0.2 + 255·0.8 = 224


def palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 128, 0, 1, 2, 3] + [0] * (253 * 3))
    im.putdata([0, 1, 2])
    if transparent:
        im.info["transparency"] = 0  # palette entry 0 (red) is fully transparent
    return im


def test_palette_without_transparency():
    np.testing.assert_array_equal(to_array(palette_image(False))[0], [[255, 0, 0], [0, 128, 0], [1, 2, 3]])


def test_palette_with_transparency():
    np.testing.assert_array_equal(to_array(palette_image(True))[0], [[255, 255, 255], [0, 128, 0], [1, 2, 3]])


def test_palette_transparency_through_a_png_file(tmp_path):
    palette_image(True).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    expected = [[255, 255, 255], [0, 128, 0], [1, 2, 3]]
    np.testing.assert_array_equal(load_image(tmp_path / "p.png")[0], expected)


def test_twemoji_palette_png(twemoji_png):
    """The built-in data: 72x72 palette PNGs with transparency; the transparent corners become white."""
    src = twemoji_png
    assert Image.open(src).mode in ("P", "RGBA")
    out = load_image(src)
    assert out.shape == (72, 72, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    assert out.min() < 200  # the emoji itself is there


def test_grey_modes():
    a = np.array([[0, 17, 255]], dtype=np.uint8)
    out = to_array(Image.fromarray(a, "L"))
    assert out.shape == (1, 3, 1)
    np.testing.assert_array_equal(out[..., 0], a)
    bw = Image.new("1", (2, 1))
    bw.putpixel((1, 0), 1)
    np.testing.assert_array_equal(to_array(bw)[..., 0], [[0, 255]])


def test_16_bit_grey_scaled_to_8_bit():
    im = Image.fromarray(np.array([[0, 65535, 32896, 257]], dtype=np.uint16))
    assert im.mode == "I;16"
    out = to_array(im)
    assert out.shape == (1, 4, 1)
    np.testing.assert_array_equal(out[..., 0], [[0, 255, 128, 1]])  # v / 65535 · 255, rounded


def test_16_bit_png_file(tmp_path):
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(load_image(tmp_path / "deep.png")[..., 0], [[0, 255]])


def test_32_bit_int_and_float_modes():
    small = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))
    assert small.mode == "I"
    np.testing.assert_array_equal(to_array(small)[..., 0], [[0, 100, 255]])  # values fit 8 bits: kept
    wide = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32))
    np.testing.assert_array_equal(to_array(wide)[..., 0], [[0, 4, 255]])  # 16-bit range: scaled
    f = Image.fromarray(np.array([[0.0, 100.4, 255.0, 300.0]], dtype=np.float32))
    assert f.mode == "F"
    np.testing.assert_array_equal(to_array(f)[..., 0], [[0, 100, 255, 255]])  # rounded and clipped


def test_cmyk():
    im = Image.new("CMYK", (3, 1))
    im.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])
    np.testing.assert_array_equal(to_array(im)[0], [[255, 255, 255], [0, 255, 255], [0, 0, 0]])


def test_channels_forcing():
    rgb = Image.new("RGB", (1, 1), (200, 100, 50))
    grey = to_array(rgb, channels=1)
    assert grey.shape == (1, 1, 1)
    assert grey[0, 0, 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # ITU-R 601-2 luma
    g3 = to_array(Image.new("L", (1, 1), 77), channels=3)
    np.testing.assert_array_equal(g3[0, 0], [77, 77, 77])
    la3 = to_array(Image.new("LA", (1, 1), (100, 51)), channels=3)
    np.testing.assert_array_equal(la3[0, 0], [224, 224, 224])


def test_match_channels():
    batch = np.array([[[[200, 100, 50]]]], dtype=np.uint8)
    assert match_channels(batch, 1)[0, 0, 0, 0] == 124  # as PIL's convert("L")
    assert match_channels(batch, 1).dtype == np.uint8
    np.testing.assert_array_equal(match_channels(batch[..., :1], 3)[0, 0, 0], [200, 200, 200])
    assert match_channels(batch, None) is batch


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00garbage"])
def test_corrupt_files_are_one_line_errors(tmp_path, content):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(DtoolsError, match=r"bad\.png: cannot read image") as e:
        load_image(tmp_path / "bad.png")
    assert "\n" not in str(e.value)


def test_decompression_bomb_is_a_one_line_error(tmp_path, monkeypatch):
    Image.new("RGB", (8, 8)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 64 pixels > 2x the limit: Pillow refuses it
    with pytest.raises(DtoolsError, match=r"huge\.png: cannot read image \(more than 8192x8192 pix"):
        load_image(tmp_path / "huge.png")


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DtoolsError, match="cut.png: cannot read image"):
        load_image(tmp_path / "cut.png")


# ---------------------------------------------------------------------------------------- sources
def test_folder_recursive_sorted_hidden_skipped(tmp_path, png_maker):
    root = tmp_path / "imgs"
    png_maker(root / "b", n=2)  # b/000000.png, b/000001.png
    (root / "a.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "a.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(root / "c.JPG", quality=100)
    Image.new("RGB", (8, 8), (0, 0, 0)).save(root / ".hidden.png")
    (root / ".git").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 0)).save(root / ".git" / "x.png")
    (root / "notes.txt").write_text("not an image")
    files = [p.relative_to(root).as_posix() for p in list_image_files(root)]
    assert files == ["a.png", "b/000000.png", "b/000001.png", "c.JPG"]
    batch = read_source(str(root))
    assert batch.shape == (4, 8, 8, 3) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[0, 0, 0], [1, 2, 3])


def test_folder_of_tiny_pngs(tiny_pngs, tiny_batch):
    np.testing.assert_array_equal(read_source(str(tiny_pngs)), tiny_batch)
    np.testing.assert_array_equal(read_images([str(tiny_pngs)]), tiny_batch)


def test_size_mismatch_names_the_file(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "000.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "001.png")
    Image.new("RGB", (9, 8)).save(tmp_path / "002.png")
    with pytest.raises(DtoolsError, match=r"differ in size .*002\.png.*dtools prep"):
        read_source(str(tmp_path))


def test_npy_file_stdin_and_single_image(tmp_path, monkeypatch, tiny_pngs, tiny_batch):
    np.save(tmp_path / "b.npy", tiny_batch)
    np.testing.assert_array_equal(read_source(str(tmp_path / "b.npy")), tiny_batch)
    monkeypatch.setattr("sys.stdin", FakeStdin(npy_bytes(tiny_batch)))
    np.testing.assert_array_equal(read_source("-"), tiny_batch)
    one = read_source(str(tiny_pngs / "000003.png"))
    assert one.shape == (1, 8, 8, 3)
    np.testing.assert_array_equal(one[0], tiny_batch[3])


def test_open_source_reads_a_folder_lazily_in_runs_of_one_size(tmp_path):
    Image.new("L", (10, 12), 7).save(tmp_path / "a.png")
    Image.new("RGB", (10, 12), (1, 2, 3)).save(tmp_path / "b.png")
    Image.new("RGB", (20, 20), (4, 5, 6)).save(tmp_path / "c.png")
    Image.new("RGB", (10, 12), (8, 8, 8)).save(tmp_path / "d.png")
    (tmp_path / "e.png").write_bytes(b"corrupt, sorted last: left out when the folder is opened, warned once")
    src = open_source(str(tmp_path), channels=3)
    assert src.name == str(tmp_path) and src.count == 4 and src.array is None
    batches = src.batches(4)
    assert [next(batches).shape for _ in range(3)] == [(2, 12, 10, 3), (1, 20, 20, 3), (1, 12, 10, 3)]
    with pytest.raises(StopIteration):
        next(batches)
    assert open_source(str(tmp_path), limit=2).count == 2
    (tmp_path / "e.png").rename(tmp_path / "e.txt")
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "a.png").rename(tmp_path / "folder.npy" / "a.png")  # a folder, whatever its name
    assert read_source(str(tmp_path / "folder.npy")).shape == (1, 12, 10, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DtoolsError, match="empty: no images found in here$"):
        open_source(str(tmp_path / "empty"), empty_hint=" in here")


def test_open_source_of_arrays_matches_channels_and_slices_batches(tmp_path, monkeypatch, tiny_batch):
    grey = tiny_batch[..., :1]
    monkeypatch.setattr("sys.stdin", FakeStdin(npy_bytes(grey)))
    src = open_source("-", channels=3)
    assert src.name == "stdin" and src.count == 6 and src.files is None
    assert [b.shape for b in src.batches(4)] == [(4, 8, 8, 3), (2, 8, 8, 3)]
    np.testing.assert_array_equal(np.concatenate(list(src.batches(4))), np.repeat(grey, 3, axis=-1))
    np.save(tmp_path / "b.npy", tiny_batch)
    np.testing.assert_array_equal(np.stack(list(open_source(str(tmp_path / "b.npy"), limit=3).images())),
                                  tiny_batch[:3])


def test_read_images_concatenates_in_order(tmp_path, tiny_pngs, tiny_batch):
    np.save(tmp_path / "b.npy", tiny_batch[:2])
    out = read_images([str(tmp_path / "b.npy"), str(tiny_pngs), str(tiny_pngs / "000005.png")])
    np.testing.assert_array_equal(out, np.concatenate([tiny_batch[:2], tiny_batch, tiny_batch[5:]]))


def test_read_images_limit_opens_only_what_it_needs(tmp_path, tiny_pngs, tiny_batch):
    (tiny_pngs / "zzz.png").write_bytes(b"corrupt, sorted last: never opened under a limit")
    np.testing.assert_array_equal(read_images([str(tiny_pngs)], limit=4), tiny_batch[:4])
    np.save(tmp_path / "b.npy", tiny_batch[:2])
    srcs = (s for s in [str(tmp_path / "b.npy"), str(tiny_pngs), str(tmp_path / "never-read")])  # a generator
    expected = np.concatenate([tiny_batch[:2], tiny_batch[:3]])
    np.testing.assert_array_equal(read_images(srcs, limit=5), expected)
    assert read_images([str(tmp_path / "b.npy")], limit=10).shape[0] == 2
    assert read_images([str(tiny_pngs)]).shape[0] == 6  # without a limit it is opened, and left out
    with pytest.raises(DtoolsError, match="--limit"):
        read_images([str(tiny_pngs)], limit=0)


def test_read_images_mixed_grey_and_rgb_become_rgb(tmp_path, tiny_batch):
    grey = np.full((2, 8, 8, 1), 50, np.uint8)
    np.save(tmp_path / "g.npy", grey)
    np.save(tmp_path / "c.npy", tiny_batch)
    out = read_images([str(tmp_path / "g.npy"), str(tmp_path / "c.npy")])
    assert out.shape == (8, 8, 8, 3)
    assert np.all(out[:2] == 50)
    assert read_images([str(tmp_path / "c.npy")], channels=1).shape == (6, 8, 8, 1)


def test_read_images_bad_inputs(tmp_path, tiny_batch):
    np.save(tmp_path / "a.npy", tiny_batch)
    np.save(tmp_path / "b.npy", np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(DtoolsError, match=r"differ in size .*a\.npy: \[8, 8, 3\].*b\.npy: \[4, 4, 3\]"):
        read_images([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
    with pytest.raises(DtoolsError, match="no image sources"):
        read_images([])
    with pytest.raises(DtoolsError, match="no such file or folder"):
        read_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DtoolsError, match="no images found"):
        read_source(str(tmp_path / "empty"))
    with pytest.raises(DtoolsError, match="no such file"):
        read_source(str(tmp_path / "missing.npy"))


@pytest.mark.parametrize(
    ("arr", "match"),
    [
        (np.zeros((2, 4, 4, 3), np.float32), "must be uint8"),
        (np.zeros((2, 4, 4, 3), np.int64), "must be uint8"),
        (np.zeros((2, 4, 4, 4), np.uint8), "C = 1 or 3"),
        (np.zeros((2, 4), np.uint8), "C = 1 or 3"),
        (np.zeros((0, 4, 4, 3), np.uint8), "no images"),
    ],
)
def test_validate_batch_rejects(arr, match):
    with pytest.raises(DtoolsError, match=match):
        validate_batch(arr, "x.npy")


def test_validate_batch_grey_without_channel_axis():
    assert validate_batch(np.zeros((2, 4, 5), np.uint8), "x").shape == (2, 4, 5, 1)


# ---------------------------------------------------------------------------------------- writing
def test_write_png_folder_names_and_round_trip(tmp_path, tiny_batch):
    paths = write_png_folder(tiny_batch, tmp_path / "out")
    assert [p.name for p in paths] == [f"{i:06d}.png" for i in range(6)]
    np.testing.assert_array_equal(read_source(str(tmp_path / "out")), tiny_batch)
    more = write_png_folder(tiny_batch[:2], tmp_path / "out", start=6)
    assert [p.name for p in more] == ["000006.png", "000007.png"]
    grey = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    write_png_folder(grey, tmp_path / "grey")
    assert Image.open(tmp_path / "grey" / "000000.png").mode == "L"
    np.testing.assert_array_equal(read_source(str(tmp_path / "grey")), grey)


def test_write_png_folder_wide_names_still_sort(tmp_path):
    paths = write_png_folder(np.zeros((2, 2, 2, 3), np.uint8), tmp_path, start=999_999)
    assert [p.name for p in paths] == ["0999999.png", "1000000.png"]


def test_write_png_folder_force(tmp_path, tiny_batch):
    out = tmp_path / "out"
    write_png_folder(tiny_batch, out)
    before = (out / "000002.png").read_bytes()
    with pytest.raises(DtoolsError, match=r"000000\.png already exists; pass --force"):
        write_png_folder(tiny_batch[::-1], out)
    assert (out / "000002.png").read_bytes() == before  # nothing was written
    write_png_folder(tiny_batch[::-1], out, force=True)
    np.testing.assert_array_equal(read_source(str(out)), tiny_batch[::-1])
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.png" for i in range(6)]  # no temp files
    (tmp_path / "file").write_text("x")
    with pytest.raises(DtoolsError, match="not a folder"):
        write_png_folder(tiny_batch, tmp_path / "file")


def test_save_png_refuses_overwrite(tmp_path):
    save_png(np.zeros((2, 2, 3), np.uint8), tmp_path / "a.png")
    with pytest.raises(DtoolsError, match="already exists"):
        save_png(np.ones((2, 2, 3), np.uint8), tmp_path / "a.png")


# ---------------------------------------------------------------------------------------- tensors
def test_uint8_round_trip_exact():
    a = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = from_uint8(a)
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(to_uint8(x), a)


def test_to_uint8_rounds_and_clips():
    one = 1 / 127.5 - 1  # the value of uint8 1
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0, one - 0.003, one + 0.003]).reshape(1, 1, 1, 7)
    np.testing.assert_array_equal(to_uint8(x)[0, 0, :, 0], [0, 0, 128, 255, 255, 1, 1])
    assert to_uint8(x).dtype == np.uint8 and to_uint8(x).shape == (1, 1, 7, 1)
