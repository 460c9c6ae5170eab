"""`dtools noise`: in-process with CliRunner, through real shell pipes, and bad inputs."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dtools.cli import app
from dtools.noise import noise_images
from dtools.schedules import make_schedule

DTOOLS = Path(sys.executable).parent / "dtools"


@pytest.fixture
def images(tmp_path) -> tuple[list[Path], np.ndarray]:
    """Two 8x8 RGB PNGs and their pixels."""
    arr = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    paths = []
    for i, a in enumerate(arr):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(a).save(paths[-1])
    return paths, arr


def run(args, input=None):
    return CliRunner().invoke(app, ["noise", *map(str, args)], input=input)


def test_writes_file_in_documented_order(images, tmp_path):
    paths, arr = images
    out = tmp_path / "x.npy"
    res = run([*paths, "-b", "linear", "--beta", "cosine", "-t", "x0,0,999", "-o", out, "--seed", "5"])
    assert res.exit_code == 0, res.stderr
    got = np.load(out)
    assert got.shape == (2 * 2 * 3, 8, 8, 3) and got.dtype == np.uint8
    betas = [make_schedule("linear", 1000), make_schedule("cosine", 1000)]
    np.testing.assert_array_equal(got, noise_images(arr, betas, [None, 0, 999], seed=5))
    np.testing.assert_array_equal(got[0], arr[0])  # (image 0, linear, x0)
    np.testing.assert_array_equal(got[6], arr[1])  # (image 1, linear, x0)
    assert "12 images = 2 images x 2 schedules x 3 timesteps" in res.stderr
    assert "dtools grid --nrow 3 --row-labels linear,cosine,linear,cosine" in res.stderr


def test_stdout_seed_and_schedule_file(images, tmp_path):
    paths, arr = images
    np.save(tmp_path / "sig.npy", make_schedule("sigmoid", 50))
    args = [paths[0], "-b", tmp_path / "sig.npy", "-t", "10,49"]
    a = run([*args, "--seed", "1"])
    assert a.exit_code == 0, a.stderr
    x = np.load(io.BytesIO(a.stdout_bytes))
    assert x.shape == (2, 8, 8, 3)
    assert "--row-labels sig" in a.stderr
    assert run([*args, "--seed", "1"]).stdout_bytes == a.stdout_bytes
    assert run([*args, "--seed", "2"]).stdout_bytes != a.stdout_bytes
    # a named schedule takes -T
    c = run([paths[0], "-b", "sigmoid", "-T", "50", "-t", "10,49", "--seed", "1"])
    assert c.stdout_bytes == a.stdout_bytes


def test_npy_batch_on_stdin(images):
    _, arr = images
    buf = io.BytesIO()
    np.save(buf, arr[:, :, :, :1])  # grey
    res = run(["-", "-b", "linear", "-t", "5"], input=buf.getvalue())
    assert res.exit_code == 0, res.stderr
    assert np.load(io.BytesIO(res.stdout_bytes)).shape == (2, 8, 8, 1)


def test_limit_reads_only_what_it_needs(images, tmp_path):
    """--limit takes the first N images in source order; later unreadable files are never opened."""
    paths, arr = images
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, a in enumerate(arr):
        Image.fromarray(a).save(folder / f"{i:06d}.png")
    (folder / "000009.png").write_bytes(b"not a png")  # sorted last: never read with --limit 2
    res = run([folder, "--limit", "2", "-b", "linear", "-t", "x0"])
    assert res.exit_code == 0, res.stderr
    np.testing.assert_array_equal(np.load(io.BytesIO(res.stdout_bytes)), arr)
    npy = tmp_path / "b.npy"
    np.save(npy, arr)
    res = run([npy, paths[0], "-n", "3", "-b", "linear", "-t", "x0"])
    np.testing.assert_array_equal(np.load(io.BytesIO(res.stdout_bytes)), np.concatenate([arr, arr[:1]]))
    res = run([folder, "-b", "linear", "-t", "x0"])  # without --limit the whole folder is read
    assert res.exit_code == 0 and "skipped 1 of 3 image files (first: 000009.png: " in res.stderr


def test_real_pipes(images, tmp_path):
    """schedule | noise (schedule on stdin) and noise | grid, through bash with the venv's script."""
    paths, _ = images
    cmd = (
        f"set -o pipefail; '{DTOOLS}' schedule cosine -T 100 "
        f"| '{DTOOLS}' noise '{paths[0]}' '{paths[1]}' -b - -b linear -T 100 -t x0,50,99 "
        f"| '{DTOOLS}' grid --nrow 3 --scale 1 -o '{tmp_path / 'g.png'}'"
    )
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--nrow 3 --row-labels cosine,linear,cosine,linear" in res.stderr  # stdin held the cosine
    with Image.open(tmp_path / "g.png") as g:  # 4 rows x 3 columns of 8x8 with 2 px padding, plus labels
        assert g.height == 2 + 4 * 10 and g.width >= 2 + 3 * 10


def test_refuses_a_terminal_before_the_work(images, tty_run):
    """Forgetting `| dtools grid` prints one line, and nothing binary reaches the terminal."""
    paths, _ = images
    code, err, seen = tty_run([str(DTOOLS), "noise", str(paths[0]), "-b", "linear"])
    assert code == 1 and seen == b""
    assert err.strip().splitlines() == [
        "Error: refusing to write binary .npy data to a terminal; pipe it "
        "(`| dtools grid --nrow K -o out.png`) or pass -o FILE"
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["-b", "linear"], "no image sources given"),
        (["{img}", "-b", "nope"], "'nope' is neither a schedule name"),
        (["{img}", "-b", "{bad_sched}"], "β is not finite"),
        (["{img}", "-b", "{missing}"], "no such file"),
        (["{img}", "{big}", "-b", "linear"], "differ in size"),
        (["{img}", "{missing}", "-b", "linear"], "no such file"),
        (["-", "-b", "-"], "stdin ('-') can feed only one input"),
        (["{img}", "-b", "linear", "-o", "{exists}"], "already exists; pass --force"),
    ],
)
def test_bad_inputs(images, tmp_path, args, message):
    paths, _ = images
    Image.new("RGB", (9, 9)).save(tmp_path / "big.png")
    np.save(tmp_path / "nan.npy", np.array([0.1, np.nan, 0.2]))
    (tmp_path / "exists.npy").write_bytes(b"x")
    subs = {"img": paths[0], "big": tmp_path / "big.png", "bad_sched": tmp_path / "nan.npy",
            "missing": tmp_path / "missing.npy", "exists": tmp_path / "exists.npy"}
    res = run([a.format(**subs) for a in args], input=b"")
    assert res.exit_code == 1, (res.exit_code, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], res.stderr
    assert res.stdout_bytes == b""


def test_usage_errors(images):
    paths, _ = images
    assert run([paths[0]]).exit_code == 2  # --beta is required
    assert run([paths[0], "-b", "linear", "--seed", "-3"]).exit_code == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["-b", "linear", "-t", "1000"], "timestep 1000 is out of range for schedule linear"),
        (["-b", "linear", "-t", "-1"], "timestep -1 is out of range"),
        (["-b", "cosine", "-T", "100", "-t", "100"], "out of range for schedule cosine (T = 100)"),
        (["-b", "linear", "-t", "0,x"], "'x' is not a timestep"),
        (["-b", "linear", "-T", "1"], "-T"),
    ],
)
def test_bad_timesteps_are_usage_errors(images, args, message):
    paths, _ = images
    res = run([paths[0], *args])
    assert res.exit_code == 2 and message in res.stderr and "Usage:" in res.stderr, res.stderr


def test_row_labels_name_the_schedule_a_file_holds(images, tmp_path):
    """`dtools schedule cosine > beta.npy` is suggested as 'cosine', not 'beta'; a schedule of one's own
    keeps its file name."""
    from dtools.schedules import make_schedule

    paths, _ = images
    np.save(tmp_path / "beta.npy", make_schedule("cosine", 1000))
    np.save(tmp_path / "mine.npy", make_schedule("cosine", 1000, max_beta=0.02))
    res = run([paths[0], "-b", "linear", "-b", str(tmp_path / "beta.npy"), "-b", str(tmp_path / "mine.npy"),
               "-o", str(tmp_path / "x.npy")])
    assert res.exit_code == 0, res.stderr
    assert "--row-labels linear,cosine,mine" in res.stderr
