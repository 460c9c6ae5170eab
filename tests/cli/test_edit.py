"""`dtools edit`, `dtools invert`, `dtools interpolate` and `sample --from-latents`: in-process with
CliRunner, on a random-weight U-Net (the exact identities) and on a toy model trained for seconds (the
round trip of DDIM inversion), and every bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dtools.checkpoint import save_model
from dtools.cli import app
from dtools.unet import UNetConfig
from tests.cli.test_sample import CFG, make_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args, input: bytes | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def npy(result) -> np.ndarray:
    assert result.exit_code == 0, result.stderr
    return np.load(io.BytesIO(result.stdout_bytes), allow_pickle=False)


def one_line_error(result, match: str, code: int = 1) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and match in lines[-1], result.stderr
    if code == 1:
        assert len(lines) == 1, result.stderr


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Four 8x8 RGB images as a .npy batch (smooth colour ramps, not noise)."""
    yy, xx = np.mgrid[0:8, 0:8]
    batch = np.stack([np.stack([xx * 30 + 10 * i, yy * 30, (xx + yy) * 15 + 20 * i], -1) for i in range(4)])
    path = tmp_path_factory.mktemp("inputs") / "in.npy"
    np.save(path, np.clip(batch, 0, 255).astype(np.uint8))
    return path


def write_mask(path: Path, size: int = 8, half: bool = True) -> Path:
    m = np.zeros((size, size), np.uint8)
    m[:, size // 2:] = 255 if half else 0
    Image.fromarray(m).save(path)
    return path


# ----------------------------------------------------------------------------------------------- edit
def test_strength_zero_returns_the_input_exactly(ckpt, inputs):
    out = npy(invoke("edit", ckpt, inputs, "--strength", 0))
    np.testing.assert_array_equal(out, np.load(inputs))


def test_strength_one_is_sample_with_the_same_seeds(ckpt, inputs):
    for sampler in ("dpm++2m", "ddpm"):
        args = ("--sampler", sampler, "--steps", 6, "--seed", 3)
        edited = npy(invoke("edit", ckpt, inputs, "--strength", 1, *args))
        drawn = npy(invoke("sample", ckpt, "-n", 4, *args))
        np.testing.assert_array_equal(edited, drawn)


def test_strength_edits_run_part_of_the_chain_and_batches_do_not_matter(ckpt, inputs):
    result = invoke("edit", ckpt, inputs, "--strength", 0.5, "--steps", 10, "--batch-size", 4)
    whole = npy(result)
    assert "strength 0.5, from t = 49 of 100: 5 of 10 dpm++2m steps (5 network calls/image)" in result.stderr
    split = npy(invoke("edit", ckpt, inputs, "--strength", 0.5, "--steps", 10, "--batch-size", 3))
    np.testing.assert_array_equal(whole, split)
    assert not np.array_equal(whole, np.load(inputs))


def test_inpainting_never_changes_an_unmasked_pixel(ckpt, inputs, tmp_path):
    mask = write_mask(tmp_path / "mask.png")
    original = np.load(inputs)
    for extra in ((), ("--resample", 2, "--sampler", "ddim"), ("--strength", 0.6, "--sampler", "heun")):
        result = invoke("edit", ckpt, inputs, "--mask", mask, "--steps", 5, *extra)
        out = npy(result)
        np.testing.assert_array_equal(out[:, :, :4], original[:, :, :4])
        assert not np.array_equal(out[:, :, 4:], original[:, :, 4:])
    result = invoke("edit", ckpt, inputs, "--mask", mask, "--steps", 5, "--resample", 2,
                    "-o", tmp_path / "r.npy")
    assert "RePaint resampling x2" in result.stderr


def test_one_mask_per_image(ckpt, inputs, tmp_path):
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[np.arange(4), np.arange(4) * 2] = 255  # image i regenerates row 2i
    np.save(tmp_path / "masks.npy", masks)
    out = npy(invoke("edit", ckpt, inputs, "--mask", tmp_path / "masks.npy", "--steps", 4))
    original = np.load(inputs)
    changed = (out != original).any(axis=-1)  # (4, 8, 8)
    assert not (changed & (masks == 0)).any()


def test_png_folder_output_refuses_to_overwrite(ckpt, inputs, tmp_path):
    out = tmp_path / "edited"
    assert invoke("edit", ckpt, inputs, "--steps", 4, "-o", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"00000{i}.png" for i in range(4)]
    one_line_error(invoke("edit", ckpt, inputs, "--steps", 4, "-o", out), "already exists; pass --force")
    assert invoke("edit", ckpt, inputs, "--steps", 4, "-o", out, "--force").exit_code == 0


def test_other_sizes_are_refused_or_resized(ckpt, tmp_path):
    big = np.full((2, 16, 12, 1), 128, np.uint8)
    np.save(tmp_path / "big.npy", big)
    one_line_error(invoke("edit", ckpt, tmp_path / "big.npy"), "images of 12x16x1, but the model takes 8x8x3")
    out = npy(invoke("edit", ckpt, tmp_path / "big.npy", "--resize", "--steps", 3))
    assert out.shape == (2, 8, 8, 3)
    grey = np.full((1, 8, 8, 1), 90, np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    one_line_error(invoke("edit", ckpt, tmp_path / "grey.npy"), "images of 8x8x1")
    as_rgb = npy(invoke("edit", ckpt, tmp_path / "grey.npy", "--resize", "--strength", 0))
    np.testing.assert_array_equal(as_rgb, np.repeat(grey, 3, axis=-1))


@pytest.fixture(scope="module")
def gan(tmp_path_factory) -> Path:
    from dtools.dcgan import DCGANConfig

    cfg = DCGANConfig(image_size=8, base_channels=8, latent_dim=4)
    path = tmp_path_factory.mktemp("gan") / "model.safetensors"
    save_model(path, {"ema": cfg.build().state_dict()}, config=cfg.to_dict(), model_type="dcgan",
               meta={"step": 1})
    return path


def test_bad_inputs_get_one_line(ckpt, gan, inputs, tmp_path):
    out = tmp_path / "x.npy"
    one_line_error(invoke("edit", ckpt, inputs, "--mask", write_mask(tmp_path / "m16.png", 16), "-o", out),
                   "masks of 16x16, but the images are 8x8")
    np.save(tmp_path / "three.npy", np.zeros((3, 8, 8), np.uint8))
    one_line_error(invoke("edit", ckpt, inputs, "--mask", tmp_path / "three.npy", "-o", out),
                   "3 masks for 4 images")
    one_line_error(invoke("edit", ckpt, inputs, "--strength", 1.5, "-o", out), "must lie in [0, 1]", code=2)
    one_line_error(invoke("edit", ckpt, inputs, "--strength", -0.1, "-o", out), "must lie in [0, 1]", code=2)
    one_line_error(invoke("edit", ckpt, inputs, "--resample", 2, "-o", out), "give --mask too")
    one_line_error(invoke("edit", ckpt, "-o", out), "no images given")
    one_line_error(invoke("edit", ckpt, tmp_path / "nothing.png", "-o", out), "no such file")
    one_line_error(invoke("edit", ckpt, inputs, "--class", "1", "-o", out), "unconditional model")
    for command in (("edit", gan, inputs), ("invert", gan, inputs), ("interpolate", gan, "--seeds", "1,2")):
        one_line_error(invoke(*command, "-o", out), "needs a diffusion model's chain")
    assert not out.exists()


# ------------------------------------------------------------------------------ invert, --from-latents
def test_invert_writes_float32_latents_that_sample_decodes(ckpt, inputs, tmp_path):
    result = invoke("invert", ckpt, inputs, "--steps", 10)
    latents = npy(result)
    assert latents.dtype == np.float32 and latents.shape == (4, 3, 8, 8)
    assert "DDIM forward along 10 trailing steps (10 network calls/image)" in result.stderr
    np.save(tmp_path / "z.npy", latents)
    decoded = npy(invoke("sample", ckpt, "--from-latents", tmp_path / "z.npy", "--steps", 10))
    assert decoded.shape == (4, 8, 8, 3)
    piped = npy(invoke("sample", ckpt, "--from-latents", "-", "--steps", 10, input=result.stdout_bytes))
    np.testing.assert_array_equal(decoded, piped)
    # the default decoder is ddim on 50 steps, as invert's default chain
    assert "ddim, 50 steps" in invoke("sample", ckpt, "--from-latents", tmp_path / "z.npy",
                                      "-o", tmp_path / "d.npy").stderr


def test_from_latents_refuses_stochastic_samplers_and_bad_latents(ckpt, tmp_path):
    z = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    out = tmp_path / "x.npy"
    for args in (("--sampler", "ddpm"), ("--sampler", "ddim", "--eta", "0.5")):
        one_line_error(invoke("sample", ckpt, "--from-latents", tmp_path / "z.npy", *args, "-o", out),
                       "draws fresh noise at every step")
    np.save(tmp_path / "shape.npy", z[:, :, :4])
    one_line_error(invoke("sample", ckpt, "--from-latents", tmp_path / "shape.npy", "-o", out),
                   "latents of shape [2, 3, 4, 8], but this model's x_T is [N, 3, 8, 8]")
    nan = z.copy()
    nan[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    one_line_error(invoke("sample", ckpt, "--from-latents", tmp_path / "nan.npy", "-o", out),
                   "1 of its 384 values are NaN or infinite")
    np.save(tmp_path / "u8.npy", np.zeros((2, 8, 8, 3), np.uint8))
    one_line_error(invoke("sample", ckpt, "--from-latents", tmp_path / "u8.npy", "-o", out),
                   "got dtype uint8")
    assert not out.exists()
    # deterministic samplers decode; the decoding does not depend on --seed
    a = npy(invoke("sample", ckpt, "--from-latents", tmp_path / "z.npy", "--sampler", "heun", "--steps", 4))
    b = npy(invoke("sample", ckpt, "--from-latents", tmp_path / "z.npy", "--sampler", "heun", "--steps", 4,
                   "--seed", 9))
    np.testing.assert_array_equal(a, b)


def test_invert_refuses_to_overwrite(ckpt, inputs, tmp_path):
    out = tmp_path / "z.npy"
    assert invoke("invert", ckpt, inputs, "--steps", 4, "-o", out).exit_code == 0
    one_line_error(invoke("invert", ckpt, inputs, "--steps", 4, "-o", out), "already exists")
    assert invoke("invert", ckpt, inputs, "--steps", 4, "-o", out, "--force").exit_code == 0


# -------------------------------------------------------------------------------------- interpolate
def test_interpolating_seeds_ends_at_their_samples(ckpt):
    frames = npy(invoke("interpolate", ckpt, "--seeds", "3,7", "-n", 5, "--steps", 6))
    assert frames.shape == (5, 8, 8, 3)
    for end, seed in ((0, 3), (-1, 7)):
        alone = npy(invoke("sample", ckpt, "-n", 1, "--seed", seed, "--sampler", "ddim", "--steps", 6))
        np.testing.assert_array_equal(frames[end], alone[0])


def test_interpolating_images_ends_at_their_reconstructions(ckpt, inputs, tmp_path):
    pair = np.load(inputs)[:2]
    np.save(tmp_path / "pair.npy", pair)
    frames = npy(invoke("interpolate", ckpt, tmp_path / "pair.npy", "-n", 4, "--steps", 6))
    latents = npy(invoke("invert", ckpt, tmp_path / "pair.npy", "--steps", 6))
    np.save(tmp_path / "z.npy", latents)
    again = npy(invoke("sample", ckpt, "--from-latents", tmp_path / "z.npy", "--steps", 6))
    np.testing.assert_array_equal(frames[[0, -1]], again)


def test_interpolate_bad_inputs(ckpt, inputs, tmp_path):
    out = tmp_path / "x.npy"
    one_line_error(invoke("interpolate", ckpt, "-o", out), "give two images (A B) or --seeds")
    one_line_error(invoke("interpolate", ckpt, inputs, "-o", out),
                   "4 images; interpolate walks between exactly two")
    one_line_error(invoke("interpolate", ckpt, inputs, "--seeds", "1,2", "-o", out), "not both")
    one_line_error(invoke("interpolate", ckpt, "--seeds", "1", "-o", out), "expects two seeds", code=2)
    one_line_error(invoke("interpolate", ckpt, "--seeds", "1,2", "--sampler", "ddpm", "-o", out),
                   "draws fresh noise at every step")
    assert not out.exists()


# ------------------------------------------------------------------------ a conditional model (random)
def test_a_conditional_model_takes_class_and_guidance(tmp_path, inputs):
    cfg = UNetConfig(**{**CFG.__dict__, "num_classes": 3})
    cond = make_checkpoint(tmp_path / "c.safetensors", cfg=cfg,
                           condition={"kind": "class", "classes": ["red", "green", "blue"]})
    args = ("--steps", 4, "--seed", 2, "--class", "green")
    edited = npy(invoke("edit", cond, inputs, "--strength", 1, *args))
    drawn = npy(invoke("sample", cond, "-n", 4, *args))
    np.testing.assert_array_equal(edited, drawn)
    guided = invoke("edit", cond, inputs, "--strength", 0.7, *args, "--guidance", 2, "-o", tmp_path / "g.npy")
    assert guided.exit_code == 0 and "classifier-free, w=2" in guided.stderr, guided.stderr
    one_line_error(invoke("edit", cond, inputs, "--guidance", 2, "-o", tmp_path / "h.npy"), "give --class")
    inverted = invoke("invert", cond, inputs, "--steps", 3, "-o", tmp_path / "z.npy")
    assert "class none (the null class)" in inverted.stderr, inverted.stderr


# ------------------------------------------------------------------ a toy model trained for seconds
TRAIN = ["--max-steps", "300", "--batch-size", "16", "--base-channels", "16", "--channel-mult", "1,2",
         "--attention", "none", "--res-blocks", "1", "--lr", "2e-3", "--sample-every", "0",
         "--save-every", "300", "--precision", "fp32", "--ema", "0.95"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, png_maker_module) -> Path:
    root = tmp_path_factory.mktemp("toy")
    png_maker_module(root / "data", n=24, size=8)
    result = invoke("train", root / "data", "-o", root / "run", *TRAIN)
    assert result.exit_code == 0, result.stderr
    return root / "run"


@pytest.fixture(scope="module")
def png_maker_module():
    from tests.conftest import make_tiny_pngs

    return make_tiny_pngs


def test_ddim_inversion_of_a_sample_reconstructs_it(trained, tmp_path):
    """The documented tolerance (docs/edit.md): a sample of the trained toy model, inverted at 50 steps
    and decoded by DDIM at 50, comes back within 3 grey levels on average, 16 at most."""
    samples = tmp_path / "s.npy"
    result = invoke("sample", trained, "-n", 8, "--sampler", "ddim", "--steps", 50, "-o", samples)
    assert result.exit_code == 0, result.stderr
    z = tmp_path / "z.npy"
    assert invoke("invert", trained, samples, "-o", z).exit_code == 0
    again = npy(invoke("sample", trained, "--from-latents", z))
    diff = np.abs(again.astype(int) - np.load(samples).astype(int))
    print(f"round trip of samples: mean {diff.mean():.3f}, max {diff.max()} grey levels")
    assert diff.mean() < 3 and diff.max() <= 16, (diff.mean(), diff.max())
