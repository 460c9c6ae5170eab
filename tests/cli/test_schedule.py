"""`dtools schedule`: in-process with CliRunner, through real shell pipes, and every bad input."""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from dtools.cli import app
from dtools.fileio import npy_bytes
from dtools.schedules import make_schedule, summarize


def ok(runner, args, input=None):
    res = runner.invoke(app, ["schedule", *args], input=input)
    assert res.exit_code == 0, res.stderr
    return res


def fails(runner, args, match, input=None, code=1):
    """A user error: exit 1 and exactly one line `Error: ...` on stderr, nothing on stdout."""
    res = runner.invoke(app, ["schedule", *args], input=input)
    assert res.exit_code == code, (res.exit_code, res.stderr)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    if code == 1:
        assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res.stderr
        assert res.stdout == ""
    assert match in res.stderr, res.stderr
    return res


def load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# ---------------------------------------------------------------------------------------- in-process
def test_writes_float64_npy_to_stdout(runner):
    res = ok(runner, ["cosine", "-T", "1000"])
    betas = load(res.stdout_bytes)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    assert betas.tobytes() == make_schedule("cosine", 1000).tobytes()  # bit-exact
    assert res.stderr == ""


@pytest.mark.parametrize("flag", ["-T", "--T", "--timesteps", "--timesteps="])
def test_every_spelling_of_T(runner, flag):
    args = ["linear", f"{flag}37"] if flag.endswith("=") else ["linear", flag, "37"]
    assert load(ok(runner, args).stdout_bytes).shape == (37,)


def test_options_reach_the_schedule(runner):
    b = load(ok(runner, ["linear", "-T", "10", "--beta-start", "0.001", "--beta-end", "0.03"]).stdout_bytes)
    np.testing.assert_array_equal(b, np.linspace(0.001, 0.03, 10))
    b = load(ok(runner, ["cosine", "-T", "100", "--max-beta", "0.02"]).stdout_bytes)
    np.testing.assert_array_equal(b, make_schedule("cosine", 100, max_beta=0.02))
    b = load(ok(runner, ["cosine", "-T", "100", "--s", "0.02"]).stdout_bytes)
    np.testing.assert_array_equal(b, make_schedule("cosine", 100, s=0.02))
    b = load(ok(runner, ["scaled-linear", "-T", "100", "--zero-terminal-snr"]).stdout_bytes)
    assert b[-1] == 1.0 and np.cumprod(1 - b)[-1] == 0.0


def test_output_file_and_force(runner, tmp_path):
    out = tmp_path / "beta.npy"
    res = ok(runner, ["linear", "-T", "20", "-o", str(out)])
    assert res.stdout == ""
    np.testing.assert_array_equal(np.load(out), make_schedule("linear", 20))
    before = out.read_bytes()
    fails(runner, ["cosine", "-T", "20", "-o", str(out)], "already exists; pass --force")
    assert out.read_bytes() == before  # untouched
    ok(runner, ["cosine", "-T", "20", "-o", str(out), "--force"])
    np.testing.assert_array_equal(np.load(out), make_schedule("cosine", 20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beta.npy"]  # no temp files left


def test_reads_a_schedule_file_and_stdin(runner, tmp_path):
    b = make_schedule("sigmoid", 30)
    np.save(tmp_path / "s.npy", b)
    np.testing.assert_array_equal(load(ok(runner, [str(tmp_path / "s.npy")]).stdout_bytes), b)
    np.testing.assert_array_equal(load(ok(runner, ["-"], input=npy_bytes(b)).stdout_bytes), b)
    np.save(tmp_path / "f32.npy", b.astype(np.float32))  # other float types are accepted, written float64
    assert load(ok(runner, [str(tmp_path / "f32.npy")]).stdout_bytes).dtype == np.float64


def test_max_beta_and_zero_terminal_snr_apply_to_files(runner, tmp_path):
    np.save(tmp_path / "c.npy", make_schedule("cosine", 100))
    b = load(ok(runner, [str(tmp_path / "c.npy"), "--max-beta", "0.02"]).stdout_bytes)
    np.testing.assert_array_equal(b, make_schedule("cosine", 100, max_beta=0.02))
    piped = npy_bytes(make_schedule("linear", 100))
    b = load(ok(runner, ["-", "--zero-terminal-snr"], input=piped).stdout_bytes)
    np.testing.assert_array_equal(b, make_schedule("linear", 100, zero_terminal_snr=True))
    res = runner.invoke(app, ["schedule", str(tmp_path / "c.npy"), "--max-beta", "2"])
    assert res.exit_code == 2 and "--max-beta: must lie in (0, 1]" in res.stderr, res.stderr


def test_plot_refuses_to_overwrite(runner, tmp_path):
    """Checked before drawing (the drawing itself is tested through the shell, test_shell_plot)."""
    png = tmp_path / "s.png"
    png.write_bytes(b"mine")
    fails(runner, ["linear", "cosine", "--plot", str(png)], "already exists; pass --force")
    assert png.read_bytes() == b"mine"
    fails(runner, ["linear", "--plot", str(tmp_path)], "is a directory")


def test_summary_table_and_json(runner, tmp_path):
    res = ok(runner, ["linear", "cosine", "-T", "1000", "--summary"])
    assert "linear" in res.stdout and "cosine" in res.stdout and "-43.9" in res.stdout
    res = ok(runner, ["linear", "cosine", "-T", "1000", "--summary", "--json"])
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["name"] for r in rows] == ["linear", "cosine"]
    expected = summarize(make_schedule("linear", 1000))
    assert rows[0] == {"name": "linear", **expected}
    np.save(tmp_path / "mine.npy", make_schedule("cosine", 50))
    res = ok(runner, [str(tmp_path / "mine.npy"), "--summary", "--json"])
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows[0]["name"] == "mine" and rows[0]["T"] == 50


def test_summary_json_is_strict_for_zero_terminal_snr(runner):
    line = ok(runner, ["linear", "--zero-terminal-snr", "--summary", "--json"]).stdout
    row = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert row["alpha_bar_T"] == 0.0 and row["snr_T_db"] is None


def test_summary_and_npy_together(runner, tmp_path):
    res = ok(runner, ["linear", "-T", "10", "--summary", "-o", str(tmp_path / "b.npy")])
    assert "linear" in res.stdout and np.load(tmp_path / "b.npy").shape == (10,)


# ---------------------------------------------------------------------------------------- bad inputs
def bad_file(tmp_path, name, arr=None, raw=None, pickle=False):
    p = tmp_path / name
    if raw is not None:
        p.write_bytes(raw)
    else:
        np.save(p, arr, allow_pickle=pickle)
    return str(p)


def test_bad_names_and_files(runner, tmp_path):
    fails(runner, ["quadratic"], "'quadratic' is neither a schedule name")
    nan = bad_file(tmp_path, "nan.npy", np.array([0.1, np.nan]))
    fails(runner, [nan], "nan.npy: β is not finite at step 2")
    fails(runner, [bad_file(tmp_path, "pk.npy", np.array([{}], dtype=object), pickle=True)], "pickle")
    fails(runner, [bad_file(tmp_path, "2d.npy", np.full((2, 3), 0.1))], "must be 1-D [T], got shape [2, 3]")
    fails(runner, [bad_file(tmp_path, "neg.npy", np.array([0.1, -0.1]))], "β must lie in (0, 1)")
    fails(runner, [bad_file(tmp_path, "big.npy", np.array([0.1, 1.0, 0.2]))], "step 2")
    fails(runner, [bad_file(tmp_path, "c.npy", np.array([0.1, 0.2], np.complex64))], "real numbers")
    fails(runner, [bad_file(tmp_path, "u.npy", np.array(["a", "b"]))], "real numbers")
    fails(runner, [bad_file(tmp_path, "junk.npy", raw=b"not numpy")], "not a .npy file")
    fails(runner, [bad_file(tmp_path, "empty.npy", raw=b"")], "empty input")
    fails(runner, [str(tmp_path / "missing.npy")], "no such file")
    fails(runner, [str(tmp_path)], "is a directory")
    fails(runner, ["-"], "stdin: empty input")
    fails(runner, ["-"], "stdin: not a .npy file", input=b"0.1 0.2 0.3\n")


def test_bad_options(runner, tmp_path):
    fails(runner, ["linear", "cosine"], "a .npy holds one schedule")
    fails(runner, ["linear", "cosine", "-o", str(tmp_path / "x.npy")], "a .npy holds one schedule")
    assert not (tmp_path / "x.npy").exists()
    fails(runner, ["linear", "-o", str(tmp_path)], "is a directory")


@pytest.mark.parametrize(
    "args",
    [
        [], ["linear", "-T", "ten"], ["linear", "--no-such-option"], ["linear", "-T"],
        ["cosine", "--max-beta", "x"], ["linear", "-T", "1"], ["linear", "--beta-end", "1.5"],
        ["cosine", "--beta-start", "0.001"], ["linear", "--max-beta", "0"],
    ],
)
def test_usage_errors_exit_2(runner, args):
    """A bad option value, refused by Click or by the schedule's own checks, is a usage error."""
    res = runner.invoke(app, ["schedule", *args])
    assert res.exit_code == 2, res.stderr
    assert "Error: " in res.stderr and res.stdout == ""


# ---------------------------------------------------------------------------------------- real pipes
def sh(cmd: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, timeout=60)


def test_shell_redirect_and_pipe(dtools_bin, tmp_path):
    res = sh(f"'{dtools_bin}' schedule cosine -T 1000 > beta.npy", tmp_path)
    assert res.returncode == 0 and res.stderr == b""
    betas = np.load(tmp_path / "beta.npy", allow_pickle=False)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    np.testing.assert_array_equal(betas, make_schedule("cosine", 1000))
    d = dtools_bin
    pipe = f"set -o pipefail; '{d}' schedule linear --T 500 | '{d}' schedule - --summary --json"
    res = sh(pipe, tmp_path)
    assert res.returncode == 0, res.stderr
    row = json.loads(res.stdout)
    assert row["name"] == "stdin" and row["T"] == 500 and row["beta_last"] == 0.02


def test_shell_plot(dtools_bin, tmp_path):
    (tmp_path / "x.png").write_bytes(b"old")
    res = sh(f"'{dtools_bin}' schedule linear cosine sigmoid --plot x.png --force", tmp_path)
    assert res.returncode == 0 and res.stdout == b"" and res.stderr == b"wrote x.png\n", res.stderr
    with Image.open(tmp_path / "x.png") as im:
        assert im.format == "PNG" and im.width > 600 and im.height > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_shell_bad_input_and_no_overwrite(dtools_bin, tmp_path):
    np.save(tmp_path / "nan.npy", np.array([0.1, np.nan, 0.2]))
    res = sh(f"'{dtools_bin}' schedule nan.npy --summary", tmp_path)
    assert res.returncode == 1 and res.stdout == b""
    assert res.stderr == b"Error: nan.npy: \xce\xb2 is not finite at step 2 (nan)\n"  # β in UTF-8
    (tmp_path / "keep.npy").write_bytes(b"keep me")
    res = sh(f"'{dtools_bin}' schedule linear -o keep.npy", tmp_path)
    assert res.returncode == 1 and res.stderr.startswith(b"Error: keep.npy already exists")
    assert (tmp_path / "keep.npy").read_bytes() == b"keep me"


def test_refuses_to_write_binary_to_a_terminal(dtools_bin, tty_run):
    code, err, seen = tty_run([str(dtools_bin), "schedule", "linear"])
    assert code == 1 and seen == b""
    assert err.startswith("Error: refusing to write binary .npy data to a terminal") and err.count("\n") == 1
    assert "-o FILE" in err
