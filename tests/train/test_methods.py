"""The baselines through the same Trainer: a few steps of each on 8x8 emoji write every output, resume
bit for bit, take their updates in the stated ratio, and refuse the options that do not apply."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dtools import train as training
from dtools.checkpoint import load_model, read_model
from dtools.errors import DtoolsError
from dtools.tensorfile import read_header
from dtools.train.data import load_images

pytestmark = pytest.mark.usefixtures("one_thread")

METRICS = {
    "dcgan": ["step", "epoch", "loss_d", "loss_g", "d_acc_real", "d_acc_fake", "lr", "img_per_s", "elapsed"],
    "vae": ["step", "epoch", "loss", "recon", "kl", "lr", "grad_norm", "img_per_s", "elapsed"],
}


@pytest.fixture
def latent():
    """`latent(data, out, model_type, **options)`: a new DCGAN or VAE run's TrainConfig, tiny and fast."""

    def make(data, out, model_type, **options) -> training.TrainConfig:
        opts = {"model_type": model_type, "base_channels": 8, "latent_dim": 16, "batch_size": 8,
                "sample_every": 0, "save_every": 5, "log_every": 1, **options}
        n, c, h, _ = load_images(str(data)).shape
        return training.new_config(str(data), str(out), None, np.zeros(0), (n, h, h, c), opts)

    return make


@pytest.mark.parametrize("model_type", ["dcgan", "vae"])
def test_a_few_steps_write_every_output(data8, tmp_path, latent, fit, model_type):
    run = tmp_path / "run"
    result = fit(latent(data8, run, model_type, max_steps=6, save_every=3, sample_every=3, log_every=2,
                        sample_count=4))
    assert (result.step, result.stopped, result.checkpoint_step) == (6, "done", 6)
    assert list(result.losses) == (["loss_d", "loss_g"] if model_type == "dcgan" else ["loss", "recon", "kl"])
    recs = [json.loads(x) for x in (run / training.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6] and list(recs[0]) == METRICS[model_type]
    assert all(np.isfinite(v) for r in recs for v in r.values())
    plots = ["loss.png", "accuracy.png"] if model_type == "dcgan" else ["loss.png"]
    for name in plots:
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    grids = sorted(p.name for p in (run / training.SAMPLES_DIR).iterdir())
    assert grids == ["step_000003.png", "step_000006.png"]

    weights, info = read_model(run / training.MODEL_FILE)
    assert info["model_type"] == model_type and info["weights"] == ["ema", "raw"] and info["step"] == 6
    assert "betas" not in info and "parameterization" not in info
    assert info["model"] == {"image_size": 8, "channels": 3, "latent_dim": 16, "base_channels": 8}
    train = info["train"]
    assert train["model_type"] == model_type and not {"beta", "T", "preset", "parameterization"} & set(train)
    assert ("d_steps" in train) == (model_type == "dcgan") and ("kl_weight" in train) == (model_type == "vae")
    assert json.loads((run / training.CONFIG_FILE).read_text())["model_type"] == model_type
    assert read_header(run / training.STATE_FILE, "dtools.train-state")["model_type"] == model_type
    assert set(weights["ema"]) == set(weights["raw"])
    assert not torch.equal(weights["ema"]["net.0.weight"], weights["raw"]["net.0.weight"])
    network = load_model(run / training.MODEL_FILE).network  # the generator (DCGAN) or decoder (VAE)
    assert network(torch.zeros(2, 16)).shape == (2, 3, 8, 8)


@pytest.mark.parametrize("model_type", ["dcgan", "vae"])
def test_interrupted_and_resumed_run_is_bit_exact(data8, tmp_path, latent, fit, state_tensors, model_type):
    """8 steps straight == 4 steps, stop, --resume to 8 (flips, batches across epochs, the EMA, Adam,
    BatchNorm statistics and the reparameterisation noise included); another seed differs."""
    extra = {"d_steps": "1:2"} if model_type == "dcgan" else {}
    straight, split, other = tmp_path / "straight", tmp_path / "split", tmp_path / "other"
    fit(latent(data8, straight, model_type, max_steps=8, batch_size=10, **extra))
    fit(latent(data8, split, model_type, max_steps=4, batch_size=10, **extra))
    assert fit(latent(data8, split, model_type, max_steps=8, batch_size=10, **extra), resume=True).step == 8
    a, b = state_tensors(straight), state_tensors(split)
    assert set(a) == set(b) and "rng.torch" in a and any(k.startswith("adam.") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ma, mb = load_file(str(straight / training.MODEL_FILE)), load_file(str(split / training.MODEL_FILE))
    assert set(ma) == set(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)
    steps = [json.loads(x)["step"] for x in (split / training.METRICS_FILE).read_text().splitlines()]
    assert steps == list(range(1, 9))
    fit(latent(data8, other, model_type, max_steps=8, batch_size=10, seed=1, **extra))
    c = state_tensors(other)
    assert [k for k in a if k.startswith("raw.") and not torch.equal(a[k], c[k])]  # the check can fail


@pytest.mark.parametrize("ratio,d_updates,g_updates", [("1:2", 3, 6), ("2:1", 6, 3), ("1:1", 3, 3)])
def test_d_steps_is_discriminator_then_generator_updates_per_step(
    data8, tmp_path, latent, fit, state_tensors, ratio, d_updates, g_updates
):
    run = tmp_path / "run"
    fit(latent(data8, run, "dcgan", max_steps=3, d_steps=ratio))
    state = state_tensors(run)
    disc_steps = {float(v) for k, v in state.items() if k.startswith("adam_disc.") and k.endswith(".step")}
    gen_steps = {float(v) for k, v in state.items() if k.startswith("adam.") and k.endswith(".step")}
    assert disc_steps == {d_updates} and gen_steps == {g_updates}
    info = read_header(run / training.STATE_FILE, "dtools.train-state")
    assert info["ema_updates"] == g_updates  # the EMA follows every generator update
    # each discriminator update takes a batch of real images: 3 steps of D batches of 8 from 24 images
    assert info["data"]["epoch"] * 24 + info["data"]["pos"] == 8 * d_updates
    # so --epochs counts the discriminator's batches: 2 epochs of 24 images in batches of 8
    per_step = d_updates // 3
    assert latent(data8, run, "dcgan", epochs=2, d_steps=ratio).total_steps() == 2 * 24 // (8 * per_step)


def test_options_that_do_not_apply_are_refused(data8, tmp_path, latent, fit):
    with pytest.raises(DtoolsError, match="^--param applies to --model unet, not dcgan"):
        latent(data8, tmp_path / "r", "dcgan", parameterization="v")
    with pytest.raises(DtoolsError, match="^--heads applies to --model unet, not vae"):
        latent(data8, tmp_path / "r", "vae", num_heads=2)
    with pytest.raises(DtoolsError, match="^--d-steps applies to --model dcgan, not vae"):
        latent(data8, tmp_path / "r", "vae", d_steps="1:2")
    with pytest.raises(DtoolsError, match="^--kl-weight applies to --model vae, not dcgan"):
        latent(data8, tmp_path / "r", "dcgan", kl_weight=2.0)
    with pytest.raises(DtoolsError, match="^--latent-dim applies to --model dcgan or vae, not unet"):
        training.configure(str(tmp_path / "r"), str(data8), "cosine", {"latent_dim": 8})
    with pytest.raises(DtoolsError, match="^--beta applies to --model unet, not vae"):
        training.configure(str(tmp_path / "r"), str(data8), "cosine", {"model_type": "vae"})
    with pytest.raises(DtoolsError, match="--d-steps: expects D:G like 1:2"):
        latent(data8, tmp_path / "r", "dcgan", d_steps="2")
    with pytest.raises(DtoolsError, match="unknown --model 'gan'"):
        latent(data8, tmp_path / "r", "gan")
    with pytest.raises(DtoolsError, match="--kl-weight: must be positive"):
        latent(data8, tmp_path / "r", "vae", kl_weight=0.0)
    run = tmp_path / "gan"
    fit(latent(data8, run, "dcgan", max_steps=1))
    for options, match in (({"model_type": "vae"}, "^--model cannot change"),
                           ({"kl_weight": 1.0}, "^--kl-weight applies to --model vae"),
                           ({"d_steps": "1:5"}, "^--d-steps cannot change"),
                           ({"lr": 1e-3}, "^--lr cannot change")):
        with pytest.raises(DtoolsError, match=match):
            training.configure(str(run), None, None, options, resume=True)
    with pytest.raises(DtoolsError, match="^--beta applies to --model unet, not dcgan"):
        training.configure(str(run), None, "cosine", {}, resume=True)
    assert training.configure(str(run), None, None, {"max_steps": 3}, resume=True).total_steps() == 3


def test_a_diverged_vae_keeps_no_nan_weights(data8, tmp_path, latent, fit, state_tensors):
    run = tmp_path / "run"
    with pytest.raises(DtoolsError, match=r"diverged at step \d+: .*try a lower --lr$"):
        fit(latent(data8, run, "vae", max_steps=50, save_every=1, lr=1e30))
    if (run / training.STATE_FILE).exists():
        assert all(torch.isfinite(v).all() for v in state_tensors(run).values() if v.is_floating_point())


def test_the_ema_generator_samples_with_batchnorm_statistics_measured_for_it(data8, tmp_path, latent, fit):
    """The checkpoint's EMA generator holds BatchNorm statistics measured on its own activations
    (standing statistics), not the EMA of the online generator's: in eval mode it computes what it
    computes in train mode on a large batch (whose statistics its own are), while the training
    state's EMA keeps its averaged buffers (an exact resume needs them)."""
    from dtools.checkpoint import load_model
    from dtools.train.state import load_state

    run = tmp_path / "gan"
    fit(latent(data8, run, "dcgan", max_steps=30, save_every=30, ema_decay=0.9, lr=2e-3))
    generator = load_model(run / training.MODEL_FILE, "ema").network
    z = torch.randn(2048, generator.latent_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        evaluated = generator.eval()(z)
        batch = generator.train()(z)
    gap = float((evaluated - batch).abs().mean())
    tensors, _ = load_state(run / training.STATE_FILE)
    averaged = {k.removeprefix("ema."): v for k, v in tensors.items() if k.startswith("ema.")}
    stored = generator.state_dict()
    mean_keys = [k for k in stored if k.endswith("running_mean")]
    assert mean_keys and any(not torch.allclose(stored[k], averaged[k]) for k in mean_keys)
    generator.load_state_dict(averaged)  # the averaged statistics the checkpoint once held
    with torch.no_grad():
        before = float((generator.eval()(z) - batch).abs().mean())
    print(f"eval vs batch statistics: standing {gap:.4f}, averaged {before:.4f}")
    assert gap < 0.02 and gap < before / 3, (gap, before)
