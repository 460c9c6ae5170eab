"""`dtools grid`: in-process with CliRunner, through real shell pipes, a real terminal, bad inputs."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
from PIL import Image

from dtools.cli import app
from dtools.fileio import npy_bytes
from dtools.grid import make_grid


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


def ok(runner, args, input=None):
    res = runner.invoke(app, ["grid", *args], input=input)
    assert res.exit_code == 0, res.stderr
    return res


def fails(runner, args, match, input=None):
    res = runner.invoke(app, ["grid", *args], input=input)
    assert res.exit_code == 1, (res.exit_code, res.stderr)
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res.stderr
    assert match in res.stderr, res.stderr
    assert res.stdout == ""


# ---------------------------------------------------------------------------------------- in-process
def test_folder_to_png(runner, tmp_path, tiny_pngs, tiny_batch):
    out = tmp_path / "g.png"
    res = ok(runner, [str(tiny_pngs), "-o", str(out)])
    # 2 rows of 3 8x8 images, enlarged 8x by default (the most it enlarges): 3 * 66 + 2 = 200 px wide
    assert res.stdout == "" and res.stderr == f"wrote {out} (6 images, 200x134)\n"
    np.testing.assert_array_equal(png_array(out.read_bytes()), make_grid(tiny_batch, scale=8))
    ok(runner, [str(tiny_pngs), "-o", str(out), "--scale", "1", "--force"])
    np.testing.assert_array_equal(png_array(out.read_bytes()), make_grid(tiny_batch))  # 32x22


def test_default_scale_makes_tiny_grids_readable(runner, tmp_path, tiny_batch):
    """Tiny images are enlarged until the grid is 256 px wide (by at most 8); larger ones are not."""
    from dtools.grid import readable_scale

    assert [readable_scale(6, 32, 2), readable_scale(8, 32, 2), readable_scale(1, 8, 2)] == [2, 1, 8]
    big = np.repeat(np.repeat(tiny_batch[:4], 16, axis=1), 16, axis=2)  # 128x128
    res = ok(runner, ["-o", "-", "--nrow", "6"], input=npy_bytes(big))
    assert png_array(res.stdout_bytes).shape == (132, 2 + 4 * 130, 3)  # 4 columns (N < nrow), unscaled
    emoji32 = np.repeat(np.repeat(tiny_batch, 4, axis=1), 4, axis=2)  # 6 32x32 images in one row
    res = ok(runner, ["-o", "-", "--nrow", "6"], input=npy_bytes(emoji32))
    assert png_array(res.stdout_bytes).shape[1] == 2 + 6 * (64 + 2) >= 256  # the README's noising grid


def test_limit_reads_only_the_first_files(runner, tmp_path, tiny_pngs, tiny_batch):
    (tiny_pngs / "999999.png").write_bytes(b"corrupt, but past the limit")
    out = tmp_path / "g.png"
    ok(runner, [str(tiny_pngs), "--limit", "6", "--nrow", "6", "-o", str(out), "--scale", "1"])
    np.testing.assert_array_equal(png_array(out.read_bytes()), make_grid(tiny_batch, nrow=6))
    r = runner.invoke(app, ["grid", str(tiny_pngs), "-o", str(tmp_path / "all.png")])  # read, left out
    assert r.exit_code == 0 and "skipped 1 of 7 image files (first: 999999.png: " in r.stderr, r.stderr


def test_stdin_and_options(runner, tmp_path, tiny_batch):
    out = tmp_path / "g.png"
    args = ["-o", str(out), "--nrow", "2", "--padding", "1", "--pad-value", "0", "--scale", "2"]
    args += ["--limit", "4"]
    ok(runner, args, input=npy_bytes(tiny_batch))
    expected = make_grid(tiny_batch[:4], nrow=2, padding=1, pad_value=0, scale=2)
    np.testing.assert_array_equal(png_array(out.read_bytes()), expected)
    assert expected.shape == (1 + 2 * 17, 1 + 2 * 17, 3)


def test_row_labels(runner, tmp_path, tiny_batch):
    out = tmp_path / "g.png"
    args = ["-", "-o", str(out), "--nrow", "3", "--row-labels", "linear, cosine"]
    ok(runner, args, input=npy_bytes(tiny_batch))
    np.testing.assert_array_equal(
        png_array(out.read_bytes()), make_grid(tiny_batch, nrow=3, labels=["linear", "cosine"], scale=None)
    )


def test_several_sources_and_grey(runner, tmp_path, tiny_pngs, tiny_batch):
    np.save(tmp_path / "a.npy", tiny_batch[:2])
    out = tmp_path / "g.png"
    ok(runner, [str(tmp_path / "a.npy"), str(tiny_pngs / "000005.png"), str(tiny_pngs), "-o", str(out),
                "--scale", "1"])
    expected = make_grid(np.concatenate([tiny_batch[:2], tiny_batch[5:], tiny_batch]))
    np.testing.assert_array_equal(png_array(out.read_bytes()), expected)
    grey = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)  # [N, H, W]: one channel
    ok(runner, ["-o", str(tmp_path / "grey.png"), "--scale", "1"], input=npy_bytes(grey))
    with Image.open(tmp_path / "grey.png") as im:
        assert im.mode == "L"
    np.testing.assert_array_equal(png_array((tmp_path / "grey.png").read_bytes()), make_grid(grey[..., None]))


def test_png_to_stdout(runner, tiny_batch):
    res = ok(runner, ["-o", "-", "--nrow", "6"], input=npy_bytes(tiny_batch))
    np.testing.assert_array_equal(png_array(res.stdout_bytes), make_grid(tiny_batch, nrow=6, scale=None))
    assert res.stderr == ""
    # without -o the PNG goes to stdout too (stdout is not a terminal here): results on stdout
    res = ok(runner, ["--nrow", "6"], input=npy_bytes(tiny_batch))
    np.testing.assert_array_equal(png_array(res.stdout_bytes), make_grid(tiny_batch, nrow=6, scale=None))


def test_no_overwrite_without_force(runner, tmp_path, tiny_batch):
    out = tmp_path / "g.png"
    out.write_bytes(b"keep")
    fails(runner, ["-o", str(out)], "already exists; pass --force", input=npy_bytes(tiny_batch))
    fails(runner, ["-o", str(out)], "already exists; pass --force")  # said before reading (empty) stdin
    assert out.read_bytes() == b"keep"
    ok(runner, ["-o", str(out), "--force", "--scale", "1"], input=npy_bytes(tiny_batch))
    assert png_array(out.read_bytes()).shape == (22, 32, 3)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "tiny") == ["g.png"]  # no temp files


# ---------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs(runner, tmp_path, tiny_batch):
    out = str(tmp_path / "g.png")
    (tmp_path / "empty").mkdir()
    fails(runner, [str(tmp_path / "empty"), "-o", out], "no images found")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    fails(runner, [str(tmp_path / "corrupt.npy"), "-o", out], "corrupt.npy: not a valid .npy array")
    np.save(tmp_path / "float.npy", tiny_batch / 255.0)
    fails(runner, [str(tmp_path / "float.npy"), "-o", out], "must be uint8")
    np.save(tmp_path / "rgba.npy", np.zeros((2, 4, 4, 4), np.uint8))
    fails(runner, [str(tmp_path / "rgba.npy"), "-o", out], "C = 1 or 3")
    np.save(tmp_path / "obj.npy", np.array([None]), allow_pickle=True)
    fails(runner, [str(tmp_path / "obj.npy"), "-o", out], "pickle")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    fails(runner, [str(tmp_path / "bad.png"), "-o", out], "bad.png: cannot read image")
    fails(runner, [str(tmp_path / "missing"), "-o", out], "no such file or folder")
    fails(runner, ["-o", out], "stdin: empty input")
    fails(runner, ["-o", out], "stdin: not a .npy file", input=b"P6 garbage")
    fails(runner, ["-o", out, "--nrow", "3", "--row-labels", "a,b,c"], "3 row labels for 2 rows",
          input=npy_bytes(tiny_batch))
    np.save(tmp_path / "small.npy", tiny_batch[:, :4, :4])
    fails(runner, [str(tmp_path / "small.npy"), "-", "-o", out], "image sources differ in size",
          input=npy_bytes(tiny_batch))
    fails(runner, ["-o", str(tmp_path)], "is a directory", input=npy_bytes(tiny_batch))
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--scale", "two"], ["-o", "x.png", "--nrow", "0"], ["-o", "x.png", "--scale", "0"],
        ["-o", "x.png", "--pad-value", "256"],
        ["-o", "x.png", "--padding", "-1"], ["-o", "x.png", "--limit", "0"], ["-o", "x.png", "--nrow", "two"],
    ],
)
def test_usage_errors_exit_2(runner, args):
    res = runner.invoke(app, ["grid", *args])
    assert res.exit_code == 2, res.stderr
    assert "Error: " in res.stderr and res.stdout == ""


# ---------------------------------------------------------------------------------------- real pipes
def test_shell_pipe_in_and_out(dtools_bin, tmp_path, tiny_pngs, tiny_batch):
    np.save(tmp_path / "batch.npy", tiny_batch)
    cmd = f"set -o pipefail; cat batch.npy | '{dtools_bin}' grid --nrow 2 --scale 2 -o - | cat > piped.png"
    res = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    expected = make_grid(tiny_batch, nrow=2, scale=2)
    np.testing.assert_array_equal(png_array((tmp_path / "piped.png").read_bytes()), expected)
    res = subprocess.run([dtools_bin, "grid", str(tiny_pngs), "-o", "folder.png"], cwd=tmp_path,
                         capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stderr.startswith(b"wrote folder.png (6 images")
    expected = make_grid(tiny_batch, scale=None)
    np.testing.assert_array_equal(png_array((tmp_path / "folder.png").read_bytes()), expected)
    # no -o, stdout a pipe: the PNG goes down the pipe
    cmd = f"set -o pipefail; '{dtools_bin}' grid '{tiny_pngs}' | cat > nameless.png"
    res = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    np.testing.assert_array_equal(png_array((tmp_path / "nameless.png").read_bytes()), expected)


def test_terminal_refusals(dtools_bin, tmp_path, tiny_pngs, tty_run):
    for out in (["-o", "-"], []):  # without -o as with -o -: stdout, refused when it is a terminal
        code, err, seen = tty_run([str(dtools_bin), "grid", str(tiny_pngs), *out])
        assert code == 1 and seen == b""
        assert err == "Error: refusing to write PNG data to a terminal; pass -o FILE or pipe stdout\n"
    args = [str(dtools_bin), "grid", "-o", str(tmp_path / "x.png")]
    code, err, _ = tty_run(args, stdin_tty=True, stdout_tty=False)
    assert code == 1 and err.startswith("Error: expected a .npy array on stdin, but stdin is a terminal")
    assert not (tmp_path / "x.png").exists()
