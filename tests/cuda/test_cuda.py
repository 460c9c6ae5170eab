"""The CUDA path, checked on a GPU: mixed precision, compile, resume, sampling, FID and torchrun.

Marked `cuda` and skipped without a GPU: `pytest -m cuda` (or `make gpu-check`) runs them. Each test
prints what it measured (`pytest -s` shows it; bench/gpu_check.sh keeps the log), and docs/performance.md
records the values of the last GPU run beside each tolerance.

Tolerances come from the precision in use: a relative error of a whole gradient (‖g − g_ref‖ / ‖g_ref‖)
against fp32 with TF32 off, bounded by a multiple of the format's unit roundoff (bf16 2^-8, fp16 2^-11);
a loss by the same bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from dtools import train as training
from dtools.cli import app
from dtools.runtime import resolve
from dtools.train.data import load_images
from dtools.train.ddpm import Ddpm

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parents[2]
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11}
# how many unit roundoffs a whole gradient may be off: rounding of activations through ~10 layers
# (convolutions, GroupNorm, attention) adds up, but stays far under this
ROUNDOFFS = 12


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def one_step(data: Path, tmp: Path, config, precision: str, compile_: bool) -> tuple[float, torch.Tensor]:
    """One DDPM training step from the same weights, images, timesteps and noise: (loss, flat gradient)."""
    cfg = config(data, tmp / f"run-{precision}-{compile_}", precision=precision, compile=compile_,
                 grad_clip=None)
    rt = resolve("cuda", precision, compile_)
    x0 = load_images(str(data))[:16].float().cuda() / 127.5 - 1.0  # (16, 3, 16, 16)
    torch.manual_seed(0)  # the same initial weights, timesteps and noise for every precision
    method = Ddpm(cfg, rt, lambda: x0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights off their initial values: zero-initialised output layers pass no gradient
        for p in method.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen).to(p.device))
    if compile_:
        # on torch 2.11 fp16 gave bf16's numbers to every digit (Dynamo evidently reused the graph it
        # compiled under bf16 autocast), so each precision compiles afresh; a process trains in one
        torch._dynamo.reset()
        method.compile()  # the step below compiles, then runs
    for _ in range(30):
        rng = torch.get_rng_state(), torch.cuda.get_rng_state()
        values = method.train_step()
        grad = torch.cat([p.grad.flatten().float() for p in method.model.parameters()])
        if torch.isfinite(grad).all():
            return values["loss"], grad
        # fp16: the scaled gradients overflowed, so the GradScaler skipped the step and halved its scale
        # (what it is for); the same step again, from the same weights and draws
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state(rng[1])
    raise AssertionError(f"{precision}: no finite gradient in 30 tries")


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_a_mixed_precision_step_agrees_with_fp32(data16, tmp_path, config, compile_):
    loss32, grad32 = one_step(data16, tmp_path, config, "fp32", False)
    for precision in ("bf16", "fp16"):  # fp16 through the GradScaler (scaled, then unscaled gradients)
        loss, grad = one_step(data16, tmp_path, config, precision, compile_)
        bound = ROUNDOFFS * UNIT_ROUNDOFF[precision]
        err_loss, err_grad = abs(loss - loss32) / loss32, rel(grad, grad32)
        print(f"{precision} {'compiled' if compile_ else 'eager'}: loss rel. error {err_loss:.2e}, "
              f"gradient rel. error {err_grad:.2e} (bound {bound:.2e})")
        assert torch.isfinite(grad).all()
        assert err_loss < bound and err_grad < bound


def test_compiled_steps_follow_the_eager_loss_trajectory(data16, tmp_path, config, fit):
    """20 steps of the default path (bf16, compiled) against the same run eager."""
    losses = {}
    for compile_ in (False, True):
        cfg = config(data16, tmp_path / f"run-{compile_}", precision="bf16", compile=compile_, max_steps=20,
                     save_every=20)
        losses[compile_] = np.array([r["loss"] for r in fit(cfg).metrics])
    eager, compiled = losses[False], losses[True]
    assert len(eager) == len(compiled) == 20
    diff = np.abs(compiled - eager) / eager
    print(f"20 steps bf16: compiled vs eager loss, largest rel. difference {diff.max():.2e}, "
          f"mean {diff.mean():.2e}; loss {eager[0]:.3f} -> {eager[-1]:.3f}")
    # rounding differences grow along the run, but the two runs must stay the same run
    assert diff.max() < 0.05 and diff.mean() < 0.02
    assert eager[-5:].mean() < eager[:5].mean()  # and it trains


def test_stop_and_resume_continues_the_run(data16, tmp_path, config, fit):
    """fp32 on CUDA: 6 steps at once against 3 + a resumed 3. cuDNN picks its algorithms by timing and
    some backward kernels add in any order, so the two are equal to rounding, not bit for bit."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    opts = dict(precision="fp32", compile=False, save_every=3)
    a = fit(config(data16, whole, max_steps=6, **opts))
    fit(config(data16, split, max_steps=3, **opts))
    b = fit(config(data16, split, max_steps=6, **opts), resume=True)
    assert (a.step, b.step, b.start_step) == (6, 6, 3)
    wa, wb = (load_file(str(r / training.MODEL_FILE)) for r in (whole, split))
    assert wa.keys() == wb.keys()
    keys = [k for k in wa if wa[k].is_floating_point()]
    errs = {k: rel(wb[k], wa[k]) for k in keys if wa[k].norm() > 0}
    worst = max(errs, key=errs.get)
    whole_err = rel(torch.cat([wb[k].flatten() for k in keys]), torch.cat([wa[k].flatten() for k in keys]))
    la, lb = a.metrics[-1]["loss"], b.metrics[-1]["loss"]
    print(f"resume on CUDA (fp32): all weights rel. difference {whole_err:.2e}, worst tensor "
          f"{errs[worst]:.2e} ({worst}); last loss {la:.6f} vs {lb:.6f}")
    # Adam divides each gradient by its own size, so a gradient near 0 that rounding flips moves one
    # weight by up to 2 lr: bounded over all weights, not per tensor
    assert whole_err < 1e-4
    assert abs(la - lb) / la < 1e-4


@pytest.fixture(scope="module")
def cuda_checkpoint(data16, tmp_path_factory) -> Path:
    """A DDPM trained 10 steps on the GPU (bf16, compiled: the default path)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    result = CliRunner().invoke(app, ["train", str(data16), "-o", str(run), "--max-steps", "10",
                                      "--batch-size", "16", "--base-channels", "16", "--channel-mult", "1,2",
                                      "--sample-every", "0", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    info = json.loads((run / training.CONFIG_FILE).read_text())["resolved"]
    assert info["device"].startswith("cuda") and info["precision"] == "bf16" and info["compile"], info
    return run / training.MODEL_FILE


def sample(ckpt: Path, out: Path, *args: str) -> np.ndarray:
    result = CliRunner().invoke(app, ["sample", str(ckpt), "-n", "8", "--seed", "3", "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return np.load(out, allow_pickle=False)


def test_a_checkpoint_trained_on_cuda_samples_on_the_cpu_as_on_the_gpu(cuda_checkpoint, tmp_path):
    cpu = sample(cuda_checkpoint, tmp_path / "cpu.npy", "--device", "cpu", "--precision", "fp32")
    gpu = sample(cuda_checkpoint, tmp_path / "gpu.npy", "--device", "cuda", "--precision", "fp32",
                 "--no-compile")
    assert cpu.shape == gpu.shape == (8, 16, 16, 3)
    d = np.abs(cpu.astype(int) - gpu.astype(int))
    print(f"sample fp32, CUDA vs CPU, same seeds: mean |diff| {d.mean():.3f} levels, max {d.max()}, "
          f"{(d > 1).mean():.2%} of values differ by more than 1")
    assert d.mean() < 0.25 and (d > 1).mean() < 0.01


def test_the_default_gpu_path_samples_close_to_fp32(cuda_checkpoint, tmp_path):
    """`dtools sample` with no flags on CUDA: bf16 and compiled; the same images to bf16's rounding."""
    ref = sample(cuda_checkpoint, tmp_path / "fp32.npy", "--device", "cuda", "--precision", "fp32",
                 "--no-compile")
    fast = sample(cuda_checkpoint, tmp_path / "default.npy")
    d = np.abs(ref.astype(int) - fast.astype(int))
    print(f"sample default (bf16, compiled) vs fp32 on CUDA: mean |diff| {d.mean():.2f} levels, "
          f"max {d.max()}")
    assert d.mean() < 4


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_the_baselines_train_and_sample_on_cuda(data16, tmp_path, config, fit, model):
    run = tmp_path / model
    result = fit(config(data16, run, model_type=model, max_steps=4, save_every=4, compile=False))
    assert result.step == 4 and all(np.isfinite(v) for v in result.losses.values()), result.losses
    images = sample(run / training.MODEL_FILE, tmp_path / "s.npy", "--device", "cuda", "--no-compile")
    assert images.shape == (8, 16, 16, 3)
    print(f"{model} on CUDA: last losses {result.losses}")


def inception_weights(tmp_path: Path) -> Path | None:
    """None where the standard FID weights are installed; else a file of the same network with fresh
    weights (the device path is the same whatever the weights: this test is about it). Its convolutions
    are He-initialised: torch's default would shrink the activations ~40 layers deep to nothing, and
    every FID to 0 (as the first GPU run of this test found)."""
    from safetensors.torch import save_file

    from dtools.errors import DtoolsError
    from dtools.fid.inception import InceptionV3
    from dtools.fid.weights import find_weights

    try:
        find_weights()
        return None
    except DtoolsError:
        pass

    class Fresh(InceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the fresh layers
            return None

    torch.manual_seed(0)
    net = Fresh({})
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path / "inception-fresh.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_fid_on_cuda_equals_the_cpu_fid(tmp_path, png_folder):
    a, b = tmp_path / "a", tmp_path / "b"
    imgs = png_folder(a, 64, 32)
    b.mkdir()
    for i, im in enumerate(imgs):  # the same emoji, shifted and darkened: a FID well above 0
        Image.fromarray((np.roll(im, 3, axis=1) * 0.8).astype(np.uint8)).save(b / f"{i:06d}.png")
    weights = inception_weights(tmp_path)
    fids = {}
    for device in ("cpu", "cuda"):
        result = CliRunner().invoke(app, ["fid", str(a), str(b), "--device", device, "--json",
                                          *(["--inception-weights", str(weights)] if weights else [])])
        assert result.exit_code == 0, result.output
        fids[device] = json.loads(result.stdout)["fid"]
    print(f"FID of 64 images: CPU {fids['cpu']:.4f}, CUDA {fids['cuda']:.4f}")
    assert fids["cpu"] > 1  # two different sets: a score that could tell a difference
    assert abs(fids["cpu"] - fids["cuda"]) < 0.1


def test_torchrun_one_process_trains_and_resumes_on_cuda(data16, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
            "-m", "dtools", "train", str(data16), "-o", str(run), "--sample-every", "0", "--save-every", "3",
            "--log-every", "1", "--device", "cuda", "--no-compile"]
    new = ["--batch-size", "16", "--base-channels", "16", "--channel-mult", "1,2"]
    first = subprocess.run([*base, *new, "--max-steps", "3"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run([*base, "--max-steps", "6", "--resume"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in (run / training.METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    print(f"torchrun --nproc-per-node 1 on CUDA: trained 3 steps, resumed to 6; "
          f"{second.stderr.strip().splitlines()[0] if second.stderr.strip() else ''}")
