"""`dtools prep` through the CLI: in-process with CliRunner, through a real shell pipe, and bad input."""

from __future__ import annotations

import io
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
    assert "warning: skipped" in r.stderr and "000002.png" in r.stderr and "skipped 1" in r.stderr
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
