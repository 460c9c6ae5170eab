"""--init-from: a new run that starts from a trained model's weights."""

from __future__ import annotations

import json

import pytest
import torch

from dtools import train as training
from dtools.checkpoint import read_info, read_model
from dtools.errors import DtoolsError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pretrained(data8, tmp_path_factory):
    """A 3-step DDPM run on the 8x8 emoji (its EMA and raw weights differ)."""
    from dtools.schedules import make_schedule
    from dtools.train.data import load_images

    run = tmp_path_factory.mktemp("pre") / "run"
    opts = {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (4,),
            "num_heads": 2, "lr": 3e-3, "batch_size": 8, "sample_every": 0, "max_steps": 3,
            "ema_decay": 0.5}
    n, c, h, _ = load_images(str(data8)).shape
    betas = make_schedule("cosine", 100)
    cfg = training.new_config(str(data8), str(run), "cosine", betas, (n, h, h, c), opts)
    training.train(cfg, progress=False, log=lambda m: None)
    return run


def options(**given):
    return {**{k: None for k in training.OPTIONS}, **given}


def test_weights_at_step_0_are_the_source(pretrained, emoji, tmp_path):
    mine = emoji(tmp_path / "mine", 6, 8)
    sets, _ = read_model(pretrained)  # a run folder stands for its model.safetensors
    for weights in ("ema", "raw"):
        given = {"init_weights": weights} if weights == "raw" else {}
        cfg = training.configure(str(tmp_path / weights), str(mine), None,
                                 options(init_from=str(pretrained), lr=1e-4, max_steps=2, **given))
        trainer = training.Trainer(cfg, progress=False, log=lambda m: None)
        trainer.setup()
        for module in (trainer.method.model, trainer.method.ema.module):
            state = module.state_dict()
            assert all(torch.equal(state[k], v) for k, v in sets[weights].items()), weights
        assert trainer.step == 0 and cfg.lr == 1e-4 and cfg.num_images == 6


def test_the_run_records_where_it_started_and_keeps_the_schedule(pretrained, emoji, tmp_path):
    mine = emoji(tmp_path / "mine", 6, 8)
    run = tmp_path / "run"
    lines: list[str] = []
    cfg = training.configure(str(run), str(mine), None,
                             options(init_from=str(pretrained), max_steps=2, sample_every=0))
    training.train(cfg, progress=False, log=lines.append)
    source = read_info(pretrained / training.MODEL_FILE)
    header = read_info(run / training.MODEL_FILE)
    assert header["model"] == source["model"] and header["betas"] == source["betas"]
    assert header["step"] == 2 and header["train"]["init_from"] == str(pretrained / training.MODEL_FILE)
    assert header["train"]["init_weights"] == "ema" and header["train"]["beta"] == "cosine"
    assert json.loads((run / training.CONFIG_FILE).read_text())["init_from"] == header["train"]["init_from"]
    assert f"starting from the ema weights of {pretrained / training.MODEL_FILE} (step 3)" in lines
    # a run without --init-from keeps the config keys it always had
    assert "init_from" not in source["train"] and "init_weights" not in source["train"]


def test_what_cannot_fit_is_refused(pretrained, emoji, tmp_path):
    big = emoji(tmp_path / "big", 4, 16)
    with pytest.raises(DtoolsError, match=r"images are 16x16x3, but .* makes 8x8x3; prepare the data at that "
                                          r"size \(dtools prep SRC .* --size 8\)"):
        training.configure(str(tmp_path / "r"), str(big), None, options(init_from=str(pretrained)))
    small = emoji(tmp_path / "small", 4, 8)
    with pytest.raises(DtoolsError, match="--base-channels: the network comes from"):
        training.configure(str(tmp_path / "r"), str(small), None,
                           options(init_from=str(pretrained), base_channels=16))
    with pytest.raises(DtoolsError, match="holds a unet model, and --init-from trains that; drop --model"):
        training.configure(str(tmp_path / "r"), str(small), None,
                           options(init_from=str(pretrained), model_type="vae"))
    with pytest.raises(DtoolsError, match="a folder without model.safetensors"):
        training.configure(str(tmp_path / "r"), str(small), None, options(init_from=str(tmp_path)))


def test_a_gan_starts_its_generator_from_the_checkpoint(data8, emoji, tmp_path):
    gan = tmp_path / "gan"
    small = {"model_type": "dcgan", "base_channels": 8, "latent_dim": 8, "batch_size": 8, "max_steps": 1,
             "sample_every": 0}
    training.train(training.configure(str(gan), str(data8), None, options(**small)), progress=False,
                   log=lambda m: None)
    lines: list[str] = []
    cfg = training.configure(str(tmp_path / "tuned"), str(emoji(tmp_path / "mine", 6, 8)), None,
                             options(init_from=str(gan), max_steps=1))
    trainer = training.Trainer(cfg, progress=False, log=lines.append)
    trainer.setup()
    sets, _ = read_model(gan)
    state = trainer.method.generator.state_dict()
    assert cfg.model_type == "dcgan" and all(torch.equal(state[k], v) for k, v in sets["ema"].items())
    assert lines[-1].endswith("(step 1); the discriminator starts afresh (a checkpoint holds only the "
                              "generator)")


def test_a_fine_tune_takes_a_lower_constant_lr_and_the_source_loss(pretrained, emoji, tmp_path):
    from dtools.train.finetune import FINETUNE_LR_FACTOR

    mine = emoji(tmp_path / "mine", 6, 8)
    source = read_info(pretrained)["train"]
    lines: list[str] = []
    cfg = training.configure(str(tmp_path / "run"), str(mine), None,
                             options(init_from=str(pretrained), max_steps=1, sample_every=0))
    assert cfg.lr == pytest.approx(FINETUNE_LR_FACTOR * source["lr"]) and cfg.lr < source["lr"]
    assert (cfg.warmup, cfg.lr_decay) == (0.0, "constant")
    assert (cfg.min_snr_gamma, cfg.t_dist, cfg.parameterization) == (
        source["min_snr_gamma"], "uniform", source["parameterization"])
    training.train(cfg, progress=False, log=lines.append)
    assert f"fine-tuning recipe: lr {cfg.lr:g} constant, Min-SNR-{source['min_snr_gamma']:g}, t uniform" in \
        "\n".join(lines)
    # options given win over the recipe
    given = training.configure(str(tmp_path / "given"), str(mine), None,
                               options(init_from=str(pretrained), lr=1e-4, min_snr_gamma=2.0, warmup=0.1,
                                       max_steps=1))
    assert (given.lr, given.min_snr_gamma, given.warmup) == (1e-4, 2.0, 0.1)


def test_a_checkpoint_without_a_training_header_fine_tunes_with_plain_mse(pretrained, emoji, tmp_path):
    """An imported model (e.g. a diffusers DDPM) has no "train" header: its recipe is a DDPM's (plain MSE,
    uniform t), not the from-scratch preset's Min-SNR, at a fraction of the preset's lr."""
    from dtools.tensorfile import load_tensors, save_tensors
    from dtools.train.finetune import FINETUNE_LR_FACTOR
    from dtools.train.presets import PRESETS

    tensors, header = load_tensors(pretrained / training.MODEL_FILE, "dtools.model")
    imported = tmp_path / "imported.safetensors"
    save_tensors(imported, tensors, {k: v for k, v in header.items() if k != "train"})
    cfg = training.configure(str(tmp_path / "run"), str(emoji(tmp_path / "mine", 6, 8)), None,
                             options(init_from=str(imported), max_steps=1))
    assert cfg.preset == "cpu16" and PRESETS["cpu16"].min_snr_gamma == 5.0
    assert (cfg.min_snr_gamma, cfg.t_dist, cfg.min_snr_floor) == (None, "uniform", 0.0)
    assert cfg.lr == pytest.approx(FINETUNE_LR_FACTOR * PRESETS["cpu16"].lr)
