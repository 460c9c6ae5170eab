"""`dtools sample`: in-process with CliRunner, through a real shell pipe, and every bad input."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dtools.checkpoint import save_model
from dtools.cli import app, click_command
from dtools.samplers import SAMPLERS
from dtools.schedules import make_schedule
from dtools.unet import UNet, UNetConfig

DTOOLS = Path(sys.executable).parent / "dtools"
T = 100
CFG = UNetConfig(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), num_heads=1, dropout=0.0, norm_groups=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_checkpoint(path: Path, parameterization="eps", betas=None, cfg=CFG, raw=True, **extra) -> Path:
    """A randomly initialised U-Net (weights ~ N(0, 0.2²), so it does not predict 0) as a model checkpoint."""
    torch.manual_seed(0)
    model = UNet(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    state = model.state_dict()
    weights = {"ema": state, **({"raw": {k: 1.1 * v for k, v in state.items()}} if raw else {})}
    meta = {"parameterization": parameterization,
            "betas": (make_schedule("cosine", T) if betas is None else betas).tolist(), "step": 7,
            "image_size": cfg.image_size, "channels": cfg.in_channels, **extra}
    save_model(path, weights, config=cfg.to_dict(), meta=meta)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors")


def invoke(*args: str):
    return CliRunner().invoke(app, ["sample", *map(str, args)])


def images(result) -> np.ndarray:
    assert result.exit_code == 0, result.stderr
    arr = np.load(io.BytesIO(result.stdout_bytes), allow_pickle=False)
    assert arr.dtype == np.uint8 and arr.ndim == 4
    return arr


def one_line_error(result, match: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert match in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_help_says_defaults_and_examples():
    result = CliRunner().invoke(app, ["sample", "--help"], terminal_width=200)
    assert result.exit_code == 0
    out = " ".join(result.stdout.split())
    for text in ("| dtools grid", "--sampler", "dpm++2m", "--trajectory", "bf16 on a CUDA GPU",
                 "on a CPU with AMX, else fp32", "on for CUDA, off on the CPU",
                 "[default: T for ddpm, 20 otherwise"):
        assert text in out, text


def sampler_option():
    return next(p for p in click_command().commands["sample"].params if p.name == "sampler")


def test_sampler_names_match_the_registry():
    assert sampler_option().metavar == "[" + "|".join(SAMPLERS) + "]"  # the choices --sampler takes


def test_help_shows_the_registrys_facts():
    """Each sampler's help line, network calls and default steps, the default sampler and which
    sampler takes --eta and --variance: as the specs say (dtools.sampler_specs), in sample and sweep."""
    from dtools.sampler_specs import DEFAULT_SAMPLER

    def help_of(command: str) -> str:
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=400)
        assert result.exit_code == 0
        return " ".join(result.stdout.split())

    out = help_of("sample")
    for spec in SAMPLERS.values():
        assert f"{spec.name}: {spec.help}" in out, spec.name
        if spec.nfe(10) != 10:
            assert f"{spec.name}: {spec.nfe_formula()}" in out and spec.nfe_formula() == "2*steps-2"
        if spec.default_steps == "T":
            assert f"T for {spec.name}" in out
        for option in spec.options:
            assert f"--{option}" in out and f"{spec.name} only:" in out
    assert f"[default: {DEFAULT_SAMPLER}]" in out
    default = SAMPLERS[DEFAULT_SAMPLER]
    steps = default.steps_for(1000)
    assert f"{steps} otherwise;" in out  # --steps: [default: T for ddpm, 20 otherwise; x>=2]
    assert f"{DEFAULT_SAMPLER} with {steps} steps" in out  # the docstring
    assert "--eta X ddim only: noise scale" in out and "[default: 0]" in out
    assert "[default: posterior]" in out
    assert f"(samplers: {', '.join(SAMPLERS)})" in help_of("sweep")


def test_npy_to_stdout(ckpt):
    result = invoke(ckpt, "-n", 5, "--steps", 4)
    arr = images(result)
    assert arr.shape == (5, 8, 8, 3)
    assert arr.std() > 0 and len({arr[i].tobytes() for i in range(5)}) == 5
    assert "dpm++2m, 4 steps (4 network calls/image)" in result.stderr


def test_a_run_folder_stands_for_its_model(ckpt, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(ckpt.read_bytes())
    from_run = images(invoke(run, "-n", 3, "--steps", 4))
    np.testing.assert_array_equal(from_run, images(invoke(ckpt, "-n", 3, "--steps", 4)))


def test_batch_size_and_count_do_not_change_images(ckpt):
    whole = images(invoke(ckpt, "-n", 7, "--steps", 4, "--sampler", "ddpm", "--batch-size", 7))
    split = images(invoke(ckpt, "-n", 7, "--steps", 4, "--sampler", "ddpm", "--batch-size", 3))
    fewer = images(invoke(ckpt, "-n", 2, "--steps", 4, "--sampler", "ddpm"))
    np.testing.assert_array_equal(whole, split)
    np.testing.assert_array_equal(whole[:2], fewer)


def test_seed_reproduces_and_changes_images(ckpt):
    a = images(invoke(ckpt, "-n", 3, "--steps", 3, "--seed", 5))
    b = images(invoke(ckpt, "-n", 3, "--steps", 3, "--seed", 5))
    c = images(invoke(ckpt, "-n", 3, "--steps", 3, "--seed", 6))
    np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a[i], c[i]) for i in range(3))


@pytest.mark.parametrize("args", [
    ("--sampler", "ddpm"),  # all T = 100 steps
    ("--sampler", "ddpm", "--variance", "beta", "--steps", 10, "--spacing", "linspace"),
    ("--sampler", "ddim", "--eta", 0.5, "--steps", 6, "--spacing", "leading"),
    ("--sampler", "heun", "--steps", 4, "--no-clip"),
    ("--weights", "raw", "--steps", 3, "--device", "cpu", "--precision", "bf16"),
])
def test_every_sampler_and_option(ckpt, args):
    assert images(invoke(ckpt, "-n", 2, *args)).shape == (2, 8, 8, 3)


def test_raw_weights_differ_from_ema(ckpt):
    assert not np.array_equal(images(invoke(ckpt, "-n", 2, "--steps", 3)),
                              images(invoke(ckpt, "-n", 2, "--steps", 3, "--weights", "raw")))


def test_png_folder_and_npy_file(ckpt, tmp_path):
    out = tmp_path / "pngs"
    result = invoke(ckpt, "-n", 3, "--steps", 3, "-o", out, "--batch-size", 2)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    from dtools.images import read_images

    np.testing.assert_array_equal(read_images([str(out)]), images(invoke(ckpt, "-n", 3, "--steps", 3)))
    one_line_error(invoke(ckpt, "-n", 3, "--steps", 3, "-o", out), "000000.png already exists; pass --force")
    assert invoke(ckpt, "-n", 3, "--steps", 3, "-o", out, "--force").exit_code == 0
    npy = tmp_path / "s.npy"
    assert invoke(ckpt, "-n", 2, "--steps", 3, "-o", npy).exit_code == 0
    assert np.load(npy).shape == (2, 8, 8, 3)
    one_line_error(invoke(ckpt, "-n", 2, "--steps", 3, "-o", npy), "already exists")


def test_force_into_a_folder_of_a_larger_run_leaves_exactly_this_runs_images(ckpt, tmp_path):
    out = tmp_path / "pngs"
    assert invoke(ckpt, "-n", 5, "--steps", 3, "-o", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    (out / "cover.png").write_bytes((out / "000000.png").read_bytes())
    result = invoke(ckpt, "-n", 2, "--steps", 3, "--seed", 1, "-o", out, "--force")
    assert result.exit_code == 0, result.stderr
    assert "removed 3 higher-numbered PNGs" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "cover.png", "notes.txt"]


def test_trajectory_layout(ckpt):
    k, n = 3, 2
    result = invoke(ckpt, "-n", n, "--steps", 4, "--sampler", "ddim", "--trajectory", k)
    traj = images(result).reshape(n, 2, k, 8, 8, 3)  # per image: a row of x_t, then a row of x0_hat
    final = images(invoke(ckpt, "-n", n, "--steps", 4, "--sampler", "ddim"))
    np.testing.assert_array_equal(traj[:, 0, -1], final)  # last column: the final image, in both rows
    np.testing.assert_array_equal(traj[:, 1, -1], final)
    assert not np.array_equal(traj[:, 0, 0], traj[:, 1, 0])  # x_T is noise, x0_hat at T-1 is not
    assert "trajectory columns: t = 99, 49, x0" in result.stderr


def test_zero_terminal_snr_v_checkpoint(tmp_path):
    betas = make_schedule("linear", T, zero_terminal_snr=True)
    ckpt = make_checkpoint(tmp_path / "v.safetensors", "v", betas)
    for sampler in SAMPLERS:
        assert images(invoke(ckpt, "-n", 2, "--steps", 5, "--sampler", sampler)).shape == (2, 8, 8, 3)


def test_real_shell_pipe(ckpt, tmp_path):
    """`dtools sample ... | dtools grid -o out.png` through bash, and the pipe carries exactly the
    in-process .npy batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out.png"
    cmd = (f"set -o pipefail; '{DTOOLS}' sample '{ckpt}' -n 4 --steps 5 "
           f"| '{DTOOLS}' grid --nrow 4 --scale 1 -o '{out}'")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "sampled 4 images in" in proc.stderr
    from PIL import Image

    with Image.open(out) as img:
        assert img.size == (4 * 8 + 5 * 2, 8 + 2 * 2)  # 4 images of 8x8 in one row, 2-pixel padding
    reader = (f"'{sys.executable}' -c 'import io, sys, numpy as np; "
              "a = np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False); "
              f"np.save(sys.argv[1], a)' '{tmp_path / 'piped.npy'}'")
    cmd = f"set -o pipefail; '{DTOOLS}' sample '{ckpt}' -n 4 --steps 5 | {reader}"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    in_process = images(invoke(ckpt, "-n", 4, "--steps", 5))
    np.testing.assert_array_equal(np.load(tmp_path / "piped.npy"), in_process)


def test_png_output_is_one_grid_not_a_folder(ckpt, tmp_path):
    """`-o out.png` writes the grid `| dtools grid -o out.png` would (not a folder called out.png);
    `-o DIR.png/` is still a folder; another image format is refused with a pointer."""
    from PIL import Image

    from dtools.grid import make_grid

    out = tmp_path / "out.png"
    res = invoke(ckpt, "-n", 4, "--steps", 5, "-o", out)
    assert res.exit_code == 0 and out.is_file(), res.stderr
    assert f"wrote {out} (a grid of 4 images" in res.stderr
    expected = make_grid(images(invoke(ckpt, "-n", 4, "--steps", 5)), scale=None)
    with Image.open(out) as im:
        np.testing.assert_array_equal(np.asarray(im), expected)
    one_line_error(invoke(ckpt, "-n", 4, "--steps", 5, "-o", out), "already exists; pass --force")
    assert invoke(ckpt, "-n", 2, "--steps", 5, "-o", f"{tmp_path / 'dir.png'}/").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "dir.png").iterdir()) == ["000000.png", "000001.png"]
    one_line_error(invoke(ckpt, "-n", 2, "-o", tmp_path / "out.jpg"), "| dtools grid")
    assert not (tmp_path / "out.jpg").exists()


def test_refuses_a_terminal(ckpt, monkeypatch):
    monkeypatch.setattr(importlib.import_module("dtools.fileio"), "stdout_is_terminal", lambda: True)
    one_line_error(invoke(ckpt, "-n", 1), "refusing to write binary .npy images to a terminal")


def _bad_files(tmp: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    good = make_checkpoint(tmp / "good.safetensors")
    names = {"truncated": "truncated.safetensors", "cut_header": "cut.safetensors",
             "foreign": "foreign.safetensors", "text": "notes.txt", "state": "state.safetensors"}
    files = {k: tmp / name for k, name in names.items()}
    files["truncated"].write_bytes(good.read_bytes()[:-100])
    files["cut_header"].write_bytes(good.read_bytes()[:3000])
    save_file({"w": torch.zeros(2)}, str(files["foreign"]))
    files["text"].write_text("hello\n")
    save_file({"w": torch.zeros(2)}, str(files["state"]),
              metadata={"dtools": json.dumps({"format": "dtools.train-state", "format_version": 1})})
    return files


@pytest.mark.parametrize("which,match", [
    ("truncated", "damaged checkpoint"),
    ("cut_header", "not a safetensors checkpoint"),
    ("foreign", "not a dtools checkpoint"),
    ("text", "not a safetensors checkpoint"),
    ("state", "expected a 'dtools.model' checkpoint"),
])
def test_bad_checkpoint_files(tmp_path, which, match):
    one_line_error(invoke(_bad_files(tmp_path)[which], "-n", 1), match)


def test_bad_checkpoint_contents(tmp_path):
    one_line_error(invoke(tmp_path / "missing.safetensors"), "no such file")
    one_line_error(invoke(tmp_path), "a folder without model.safetensors; give a checkpoint file, or a run")
    wrong = make_checkpoint(tmp_path / "wrong.safetensors")
    other = UNetConfig(**{**CFG.to_dict(), "base_channels": 16})
    path = tmp_path / "mismatch.safetensors"
    from dtools.checkpoint import read_model

    weights, info = read_model(wrong)
    save_model(path, weights, config=other.to_dict(), meta=info)
    one_line_error(invoke(path, "-n", 1), "weights do not fit its model config")
    one_line_error(invoke(make_checkpoint(tmp_path / "noraw.safetensors", raw=False), "--weights", "raw"),
                   "holds no raw")
    one_line_error(invoke(make_checkpoint(tmp_path / "p.safetensors", "score"), "-n", 1),
                   "unknown parameterization 'score'")
    one_line_error(invoke(make_checkpoint(tmp_path / "b.safetensors", betas=np.array([0.1, 1.5])), "-n", 1),
                   "bad schedule in the header")
    nan = make_checkpoint(tmp_path / "nan.safetensors")
    weights, info = read_model(nan)
    weights["ema"]["conv_in.weight"][0] = float("nan")
    save_model(nan, weights, config=info["model"], meta=info, force=True)
    one_line_error(invoke(nan, "-n", 1), "NaN or inf")


@pytest.mark.parametrize("args,match", [
    (("--steps", 101), "--steps: must lie in [2, 100]"),
    (("--steps", 1), "'--steps'"),
    (("--sampler", "ddim", "--eta", 2), "--eta: must lie in [0, 1]"),
    (("--sampler", "ddpm", "--variance", "learned"), "'learned' is not one of beta, posterior"),
    (("--sampler", "euler"), "'euler' is not one of ddpm, ddim, dpm++2m, heun"),
    (("--spacing", "karras"), "'karras' is not one of"),
    (("--weights", "best"), "'best' is not one of ema, raw"),
    (("--device", "tpu"), "'tpu' is not a device"),
    (("--precision", "fp8"), "'fp8' is not one of"),
    (("--steps", 4, "--trajectory", 9), "--trajectory: 9: the chain has only 5 states"),
])
def test_bad_options(ckpt, args, match):
    """A bad option value, refused by Click or by a check against the checkpoint, is a usage error."""
    res = invoke(ckpt, "-n", 1, *args)
    assert res.exit_code == 2 and match in res.stderr and "Usage:" in res.stderr, res.stderr


def test_an_option_for_another_sampler_is_refused_in_one_line(ckpt):
    """Not a bad value but an option that does not apply (as train's options for another --model): exit 1."""
    one_line_error(invoke(ckpt, "-n", 1, "--eta", 0.5), "--eta applies to --sampler ddim, not dpm++2m")
    one_line_error(invoke(ckpt, "-n", 1, "--variance", "beta"), "--variance applies to --sampler ddpm")


@pytest.mark.parametrize("args", [("-n", 0), ("--batch-size", 0), ("--trajectory", 1), ("--steps", "many")])
def test_usage_errors_exit_2(ckpt, args):
    assert invoke(ckpt, *args).exit_code == 2
