"""`dtools export` and `dtools import`: the folder diffusers loads, the round trip, DDIM through both
libraries from the same noise, and every bad input. diffusers is a test-only dependency; every model is
built here, nothing is downloaded."""

from __future__ import annotations

import io
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import save_file
from typer.testing import CliRunner

from dtools.checkpoint import read_model, save_model
from dtools.cli import app
from dtools.diffusion import alphas_cumprod
from dtools.samplers import image_seed
from dtools.schedules import make_schedule
from dtools.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = UNetConfig(image_size=8, in_channels=3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), num_heads=2, dropout=0.0, norm_groups=4)


def make_checkpoint(path: Path, parameterization="eps", cfg=CFG, raw=True) -> Path:
    """A U-Net with random weights (N(0, 0.2²), so nothing is zero) as a checkpoint, T = 100 (cosine)."""
    torch.manual_seed(0)
    net = UNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    state = net.state_dict()
    weights = {"ema": state, **({"raw": {k: 1.1 * v for k, v in state.items()}} if raw else {})}
    meta = {"parameterization": parameterization, "betas": make_schedule("cosine", 100).tolist(), "step": 7,
            "image_size": cfg.image_size, "channels": cfg.in_channels, "ema_decay": 0.999,
            "train": {"lr": 0.001, "data": "data/"}}
    save_model(path, weights, config=cfg.to_dict(), meta=meta)
    return path


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result) -> str:
    assert result.exit_code == 0, result.stderr
    return result.stderr


def one_line_error(result, match: str, code: int = 1) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    assert match in lines[-1], lines[-1]
    if code == 1:
        assert len(lines) == 1, result.stderr


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("export") / "model.safetensors")


@pytest.fixture(scope="module")
def exported(ckpt) -> Path:
    out = ckpt.parent / "pipe"
    log = ok(invoke("export", ckpt, "-o", out, "--format", "diffusers"))
    assert f"wrote {out}/ (UNet2DModel" in log and "DDPMScheduler: T = 100, epsilon, fixed_small" in log
    return out


def test_the_folder_is_what_diffusers_loads(ckpt, exported):
    assert sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()) == [
        "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors"]
    pipe = DDPMPipeline.from_pretrained(exported)
    assert isinstance(pipe.scheduler, DDPMScheduler) and isinstance(pipe.unet, UNet2DModel)
    sets, header = read_model(ckpt)
    model = UNet2DModel.from_pretrained(exported / "unet").eval()
    net = make_net(header["model"], sets["ema"])
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([0, 42, 99])
    with torch.no_grad():
        ours, theirs = net(x, t), model(x, t).sample
    assert ours.abs().mean() > 0.05
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # the scheduler's ᾱ are the checkpoint's (diffusers holds them in float32)
    theirs = pipe.scheduler.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(theirs, alphas_cumprod(header["betas"]), rtol=0, atol=1e-6)
    assert torch.equal(pipe.scheduler.betas, torch.tensor(header["betas"], dtype=torch.float32))


def make_net(config: dict, state: dict) -> UNet:
    net = UNet(UNetConfig.from_dict(config)).eval()
    net.load_state_dict(state, strict=True)
    return net


def test_export_then_import_is_the_identity(ckpt, exported, tmp_path):
    back = tmp_path / "back.safetensors"
    log = ok(invoke("import", exported, "-o", back))
    assert "a dtools export: its header is back" in log
    (orig_sets, orig), (sets, header) = read_model(ckpt), read_model(back)
    assert list(sets) == ["ema"] and sets["ema"].keys() == orig_sets["ema"].keys()
    assert all(torch.equal(sets["ema"][k], v) for k, v in orig_sets["ema"].items())
    assert header.pop("source") == {"format": "diffusers", "path": str(exported), "class": "UNet2DModel",
                                    "weights": "ema"}
    assert header.pop("weights") == ["ema"] and orig.pop("weights") == ["ema", "raw"]
    assert header == orig  # betas, parameterization, model config, step and every other field


def test_raw_weights_and_beta_variance(ckpt, tmp_path):
    out = tmp_path / "raw"
    ok(invoke("export", ckpt, "-o", out, "--weights", "raw", "--variance", "beta"))
    assert json.loads((out / "scheduler/scheduler_config.json").read_text())["variance_type"] == "fixed_large"
    back = tmp_path / "raw.safetensors"
    log = ok(invoke("import", out, "-o", back))
    assert "dtools sample --variance beta" in log
    sets, header = read_model(back)
    raw, _ = read_model(ckpt)
    assert all(torch.equal(sets["ema"][k], v) for k, v in raw["raw"].items())
    assert header["source"]["weights"] == "raw"


@pytest.mark.parametrize("parameterization, spacing, steps", [
    ("eps", "trailing", 5), ("x0", "leading", 10), ("v", "trailing", 10)])
def test_ddim_pipeline_and_dtools_sample_agree(tmp_path, parameterization, spacing, steps):
    """The same x_T (image i's generator, as `dtools sample --seed 0` seeds it), DDIM with η = 0 and
    clipped x0 in both: diffusers' pipeline on the export, `dtools sample` on the checkpoint. T = 100
    is a multiple of the steps, where diffusers' previous-timestep rule (t - T // steps) is dtools'."""
    ckpt = make_checkpoint(tmp_path / "m.safetensors", parameterization=parameterization, raw=False)
    ok(invoke("export", ckpt, "-o", tmp_path / "pipe"))
    result = invoke("sample", ckpt, "-n", 4, "--sampler", "ddim", "--steps", steps, "--eta", 0,
                    "--spacing", spacing, "--precision", "fp32")  # diffusers' pipeline runs fp32
    ours = np.load(io.BytesIO(result.stdout_bytes), allow_pickle=False)  # uint8 (4, 8, 8, 3)
    scheduler = DDIMScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler",
                                              timestep_spacing=spacing)
    pipe = DDIMPipeline(unet=UNet2DModel.from_pretrained(tmp_path / "pipe" / "unet"), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(image_seed(0, i)) for i in range(4)]
    theirs = pipe(batch_size=4, generator=generators, eta=0.0, num_inference_steps=steps,
                  use_clipped_model_output=True, output_type="np").images  # float32 in [0, 1]
    assert theirs.shape == ours.shape
    assert ((ours > 0) & (ours < 255)).mean() > 0.02  # not only saturated pixels (eps: 3%, x0, v: > 50%)
    # dtools rounds (x + 1) * 127.5 to the nearest level: diffusers' value is within half a level
    assert np.abs(theirs.astype(np.float64) * 255 - ours).max() < 0.5 + 1e-3


@pytest.mark.parametrize("variance", ["beta", "posterior"])
def test_ddpm_with_fewer_steps_in_diffusers_as_docs_export_says(tmp_path, variance):
    """docs/export.md: with fewer than T steps and `--variance beta`, DDPMScheduler adds noise of
    variance 1 - ᾱ on its last step (t > 0 there) where dtools lands on x0 with none; taking the last
    step's `pred_original_sample` gives dtools' images exactly, for either variance."""
    ckpt = make_checkpoint(tmp_path / "m.safetensors", raw=False)
    ok(invoke("export", ckpt, "-o", tmp_path / "pipe", "--variance", variance))
    result = invoke("sample", ckpt, "-n", 4, "--sampler", "ddpm", "--steps", 10, "--variance", variance,
                    "--precision", "fp32")
    ours = np.load(io.BytesIO(result.stdout_bytes), allow_pickle=False).astype(np.float64)  # (4, 8, 8, 3)
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler",
                                              timestep_spacing="trailing")
    unet = UNet2DModel.from_pretrained(tmp_path / "pipe" / "unet")
    images = {}
    for last in ("prev_sample", "pred_original_sample"):  # diffusers' pipeline; the documented loop
        generators = [torch.Generator().manual_seed(image_seed(0, i)) for i in range(4)]
        x = torch.cat([torch.randn((1, 3, 8, 8), generator=g) for g in generators])  # as randn_tensor draws
        scheduler.set_timesteps(10)
        with torch.no_grad():
            for i, t in enumerate(scheduler.timesteps):
                out = scheduler.step(unet(x, t).sample, t, x, generator=generators)
                x = getattr(out, last) if i == len(scheduler.timesteps) - 1 else out.prev_sample
        images[last] = ((x.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).double().numpy()
    assert np.abs(images["pred_original_sample"] - ours).max() < 0.5 + 1e-3
    plain = np.abs(images["prev_sample"] - ours).max()
    if variance == "beta":
        assert plain > 10, plain  # the pipeline's last-step noise: std sqrt(1 - ᾱ_9) of the 100-step cosine
    else:
        assert plain < 0.5 + 1e-3  # β̃ is 0 on the last step: the pipeline itself agrees


def test_a_folder_diffusers_wrote(tmp_path):
    """A pipeline that diffusers saved itself (named cosine schedule, one-head attention, v-prediction)
    imports, and the checkpoint samples."""
    torch.manual_seed(3)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D"), attention_head_dim=None,
                       norm_num_groups=4)
    scheduler = DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2",
                              prediction_type="v_prediction")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp_path / "theirs", safe_serialization=True)
    log = ok(invoke("import", tmp_path / "theirs", "-o", tmp_path / "ours.safetensors"))
    assert "(unet, " in log and ", v, T = 50)" in log and "dtools export" not in log
    sets, header = read_model(tmp_path / "ours.safetensors")
    source = {"format": "diffusers", "path": str(tmp_path / "theirs"), "class": "UNet2DModel"}
    assert header["source"] == source
    assert header["model"]["attention_resolutions"] == [8] and header["channels"] == 1
    np.testing.assert_allclose(header["betas"], scheduler.betas.double().numpy(), rtol=3e-6, atol=1e-7)
    net = make_net(header["model"], sets["ema"])
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 49])
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), unet.eval()(x, t).sample, rtol=1e-5, atol=1e-5)
    result = invoke("sample", tmp_path / "ours.safetensors", "-n", 2, "--steps", 3)
    assert result.exit_code == 0 and np.load(io.BytesIO(result.stdout_bytes)).shape == (2, 8, 8, 1)


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line each, naming what is wrong


def test_no_overwrite_without_force(ckpt, exported, tmp_path):
    one_line_error(invoke("export", ckpt, "-o", exported), "already exists and is not empty; pass --force")
    (tmp_path / "ckpt.safetensors").write_bytes(b"x")
    one_line_error(invoke("import", exported, "-o", tmp_path / "ckpt.safetensors"), "pass --force")
    assert (tmp_path / "ckpt.safetensors").read_bytes() == b"x"
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "todo.txt").write_text("keep me")
    one_line_error(invoke("export", ckpt, "-o", mine, "--force"), "holds files dtools export did not write")
    assert (mine / "notes" / "todo.txt").read_text() == "keep me"
    ok(invoke("export", ckpt, "-o", tmp_path / "again"))
    ok(invoke("export", ckpt, "-o", tmp_path / "again", "--force", "--weights", "raw"))  # replaces its own
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def copy_export(exported: Path, to: Path) -> Path:
    for p in exported.rglob("*"):
        if p.is_file():
            (to / p.relative_to(exported)).parent.mkdir(parents=True, exist_ok=True)
            (to / p.relative_to(exported)).write_bytes(p.read_bytes())
    return to


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_import_bad_folders(exported, tmp_path):
    out = tmp_path / "x.safetensors"
    one_line_error(invoke("import", tmp_path / "missing", "-o", out), "missing: no such folder")
    one_line_error(invoke("import", exported / "unet", "-o", out), "looks like a bare unet/ folder")

    pickled = copy_export(exported, tmp_path / "pickled")
    weights = pickled / "unet"
    (weights / "diffusion_pytorch_model.safetensors").rename(weights / "diffusion_pytorch_model.bin")
    one_line_error(invoke("import", pickled, "-o", out), "pickled weights only (diffusion_pytorch_model.bin)")

    cross = copy_export(exported, tmp_path / "cross")
    edit_json(cross / "unet/config.json", down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"])
    one_line_error(invoke("import", cross, "-o", out), "down_block_types holds 'CrossAttnDownBlock2D'")

    learned = copy_export(exported, tmp_path / "learned")
    edit_json(learned / "scheduler/scheduler_config.json", variance_type="learned_range")
    one_line_error(invoke("import", learned, "-o", out),
                   "scheduler_config.json: variance_type 'learned_range'")

    wider = copy_export(exported, tmp_path / "wider")
    edit_json(wider / "unet/config.json", block_out_channels=[8, 24])
    one_line_error(invoke("import", wider, "-o", out), "the weights do not fit unet/config.json")

    extra = copy_export(exported, tmp_path / "extra")
    save_file({"add_embedding.weight": torch.zeros(2, 2)}, extra / WEIGHTS)
    one_line_error(invoke("import", extra, "-o", out), "'add_embedding.weight' has no place")

    classes = copy_export(exported, tmp_path / "classes")  # another model's classes: no null class
    edit_json(classes / "unet/config.json", num_class_embeds=10)
    one_line_error(invoke("import", classes, "-o", out), "num_class_embeds 10: a class-conditional model "
                   "without a null class")
    assert not out.exists()


def test_export_refusals(tmp_path):
    wide = make_checkpoint(tmp_path / "wide.safetensors", raw=False, cfg=UNetConfig(
        image_size=8, in_channels=3, base_channels=8, channel_mult=(2, 2), num_res_blocks=1,
        attention_resolutions=(4,), num_heads=1, dropout=0.0, norm_groups=4))
    one_line_error(invoke("export", wide, "-o", tmp_path / "w"),
                   "diffusers cannot express this model exactly: channel_mult")
    one_line_error(invoke("export", wide, "-o", tmp_path / "w", "--weights", "raw"), "holds no raw")
    one_line_error(invoke("export", tmp_path / "nothing.safetensors", "-o", tmp_path / "w"), "no such file")
    one_line_error(invoke("export", wide, "-o", tmp_path / "w", "--format", "onnx"), "--format", code=2)
    one_line_error(invoke("export", wide, "-o", tmp_path / "w", "--variance", "x"), "--variance", code=2)
    edm = make_checkpoint(tmp_path / "edm.safetensors", parameterization="edm", raw=False)
    one_line_error(invoke("export", edm, "-o", tmp_path / "w"),
                   "no prediction_type for the parameterization 'edm'")
    assert not (tmp_path / "w").exists()


def test_help_has_pipeline_examples():
    for command, text in (("export", "DDPMPipeline.from_pretrained"), ("import", "| dtools grid")):
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0 and text in result.stdout
