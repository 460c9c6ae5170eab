"""The training loop on tiny twemoji images: it learns, resumes bit for bit, and stops cleanly."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dtools import train as training
from dtools.checkpoint import read_model
from dtools.errors import DtoolsError
from dtools.tensorfile import read_header
from dtools.train import ddpm, loop

pytestmark = pytest.mark.usefixtures("one_thread")


def test_short_run_lowers_the_loss_and_writes_every_output(data8, tmp_path, config, fit, betas):
    run = tmp_path / "run"
    # ε with plain MSE: the loss the threshold below is written for
    cfg = config(data8, run, max_steps=60, save_every=30, log_every=5, dropout=0.0, parameterization="eps",
                 min_snr_gamma=0)
    result = fit(cfg)
    assert (result.step, result.stopped, result.checkpoint_step) == (60, "done", 60)
    losses = [r["loss"] for r in result.metrics]
    assert len(losses) == 12
    first, last = np.mean(losses[:2]), np.mean(losses[-2:])
    assert last < 0.6 * first, (first, last)  # untrained it predicts 0: loss ≈ E[ε²] = 1

    weights, info = read_model(run / training.MODEL_FILE)
    assert info["format"] == "dtools.model" and info["step"] == 60
    assert info["parameterization"] == "eps" and info["weights"] == ["ema", "raw"]
    assert info["betas"] == betas.tolist()  # the exact float64 schedule
    assert (info["image_size"], info["channels"], info["ema_decay"]) == (8, 3, 0.999)
    assert info["model"]["base_channels"] == 8 and info["train"]["max_steps"] == 60
    raw, ema = weights["raw"], weights["ema"]
    assert set(raw) == set(ema) and "conv_in.weight" in ema
    assert not torch.equal(raw["conv_out.weight"], ema["conv_out.weight"])

    lines = (run / training.METRICS_FILE).read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["step"] for r in recs] == list(range(5, 61, 5))
    assert set(recs[0]) >= {"step", "loss", "lr", "grad_norm", "img_per_s", "elapsed"}
    assert (run / training.LOSS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / training.CONFIG_FILE).read_text())["resolved"]["total_steps"] == 60
    assert not list(run.glob(".*tmp*"))  # no temp files left behind


def test_sample_grids_are_written(data8, tmp_path, config, fit):
    run = tmp_path / "run"
    cfg = config(data8, run, max_steps=4, save_every=4, sample_every=2, sample_count=4)
    fit(cfg)
    grids = sorted(p.name for p in (run / training.SAMPLES_DIR).iterdir())
    assert grids == ["step_000002.png", "step_000004.png"]
    with Image.open(run / training.SAMPLES_DIR / grids[-1]) as im:
        assert im.width > 2 * 8 * 4 and im.mode in ("RGB", "L")  # 2x2 images of 8 px, scaled up


def test_interrupted_and_resumed_run_is_bit_exact(data8, tmp_path, config, fit, state_tensors):
    """N steps straight == N/2 steps, stop, --resume to N: every weight, moment and RNG state equal.
    Dropout, flips, a batch that straddles epochs and gradient accumulation are all in play. (The
    first session is sized to N/2 steps, so the lr is kept constant: a decaying schedule is sized to
    the run, and the interrupted case below covers it.)"""
    opts = {"batch_size": 10, "grad_accum": 2, "dropout": 0.1, "flip": True, "lr_decay": "constant",
            "warmup": 0.0}
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(config(data8, straight, max_steps=12, **opts))
    fit(config(data8, split, max_steps=6, **opts))
    cfg = config(data8, split, max_steps=12, **opts)
    result = fit(cfg, resume=True)
    assert result.step == 12
    a, b = state_tensors(straight), state_tensors(split)
    assert set(a) == set(b) and any(k.startswith("adam.") for k in a) and "rng.torch" in a
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == []
    ma, mb = load_file(str(straight / training.MODEL_FILE)), load_file(str(split / training.MODEL_FILE))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert read_header(split / training.STATE_FILE, "dtools.train-state")["step"] == 12
    steps = [json.loads(x)["step"] for x in (split / training.METRICS_FILE).read_text().splitlines()]
    assert steps == list(range(1, 13))  # no gaps or repeats across the resume


def test_a_different_seed_gives_different_weights(data8, tmp_path, config, fit, state_tensors):
    # The bit-exact test above must be able to fail: the same steps with another seed differ.
    a, b = tmp_path / "a", tmp_path / "b"
    fit(config(data8, a, max_steps=2))
    fit(config(data8, b, max_steps=2, seed=1))
    ta, tb = state_tensors(a), state_tensors(b)
    assert not torch.equal(ta["raw.conv_in.weight"], tb["raw.conv_in.weight"])


def test_gradient_accumulation_matches_one_big_batch(data8, tmp_path, config, fit, state_tensors):
    """--grad-accum 4 splits exactly the batch an unsplit step sees: same losses, same weights up to
    float summation order (Adam turns a near-zero gradient's rounding into a visible step, so a few
    elements may differ slightly; a different batch would move most weights by ~lr = 3e-3). In fp32:
    bf16 (auto on CPUs with AMX) rounds a batch of 2 differently from one of 8, ~1e-5 of the loss."""
    one = fit(config(data8, tmp_path / "one", max_steps=3, dropout=0.0, precision="fp32"))
    four = fit(config(data8, tmp_path / "four", max_steps=3, dropout=0.0, grad_accum=4, precision="fp32"))
    assert [r["loss"] for r in four.metrics] == pytest.approx([r["loss"] for r in one.metrics], rel=1e-5)
    a, b = state_tensors(tmp_path / "one"), state_tensors(tmp_path / "four")
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a if k.startswith("raw.")])
    assert (diffs > 1e-5).float().mean() < 0.01 and diffs.max() < 1e-3


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    data8, tmp_path, monkeypatch, config, fit, state_tensors
):
    run = tmp_path / "run"
    calls = {"n": 0}
    real_q_sample = ddpm.q_sample

    def poisoned(s, x0, t, eps):  # NaN data from the 8th step on
        calls["n"] += 1
        x_t = real_q_sample(s, x0, t, eps)
        return x_t * float("nan") if calls["n"] >= 9 else x_t  # call 1: setup's memory probe (memory.py)

    monkeypatch.setattr(ddpm, "q_sample", poisoned)
    cfg = config(data8, run, max_steps=20, save_every=5)
    with pytest.raises(DtoolsError, match=r"diverged at step 8: loss is nan.*checkpoint \(step 5\)"):
        fit(cfg)
    state = state_tensors(run)
    assert read_header(run / training.STATE_FILE, "dtools.train-state")["step"] == 5
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())
    weights, info = read_model(run / training.MODEL_FILE)
    assert info["step"] == 5 and all(torch.isfinite(v).all() for sd in weights.values() for v in sd.values())
    # and the run resumes from it
    monkeypatch.setattr(ddpm, "q_sample", real_q_sample)
    result = fit(config(data8, run, max_steps=7), resume=True)
    assert result.step == 7


def test_absurd_learning_rate_never_writes_nan_weights(data8, tmp_path, config, fit, state_tensors):
    run = tmp_path / "run"
    cfg = config(data8, run, max_steps=50, save_every=1, lr=1e30, grad_clip=None)
    with pytest.raises(DtoolsError, match="diverged"):
        fit(cfg)
    if (run / training.STATE_FILE).exists():
        for v in state_tensors(run).values():
            assert not v.is_floating_point() or torch.isfinite(v).all()


def test_ctrl_c_saves_a_checkpoint(data8, tmp_path, monkeypatch, config, fit):
    run = tmp_path / "run"
    real_step, calls = ddpm.Ddpm.train_step, []

    def step_then_interrupt(self):
        out = real_step(self)
        calls.append(1)
        if len(calls) == 4:  # call 1 is setup's memory probe (train/memory.py)
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 3
        return out

    monkeypatch.setattr(ddpm.Ddpm, "train_step", step_then_interrupt)
    # what SIGINT did before: Python's handler, or SIG_IGN under `make test &`, nohup or a CI runner
    before = signal.getsignal(signal.SIGINT)
    result = fit(config(data8, run, max_steps=50, save_every=100, log_every=10))
    assert (result.stopped, result.step, result.checkpoint_step) == ("interrupted", 3, 3)
    assert read_header(run / training.STATE_FILE, "dtools.train-state")["step"] == 3
    assert signal.getsignal(signal.SIGINT) == before  # the handler is restored to what it was


def test_max_minutes_ends_with_a_checkpoint(data8, tmp_path, config, fit):
    run = tmp_path / "run"
    result = fit(config(data8, run, max_steps=1000, max_minutes=1e-6))
    assert (result.stopped, result.step, result.checkpoint_step) == ("max_minutes", 1, 1)
    assert (run / training.MODEL_FILE).exists()


def test_bf16_autocast_on_cpu_and_checkpoint_before_any_log_line(data8, tmp_path, config, fit):
    lines: list[str] = []
    cfg = config(data8, tmp_path / "run", max_steps=3, save_every=2, log_every=10, precision="bf16")
    result = training.train(cfg, progress=False, log=lines.append)
    assert result.step == 3 and result.loss is not None
    assert any(line.startswith("step 2/3  loss -  ") for line in lines)  # saved before the first log window
    weights, _ = read_model(tmp_path / "run" / training.MODEL_FILE)
    # weights stay fp32 under autocast
    assert all(v.dtype == torch.float32 for sd in weights.values() for v in sd.values())
    with pytest.raises(DtoolsError, match="fp16 needs a GPU"):
        fit(config(data8, tmp_path / "fp16", max_steps=1, precision="fp16", device="cpu"))


def test_a_trainer_does_nothing_until_it_runs(data8, tmp_path, config):
    run = tmp_path / "run"
    run.mkdir()
    (run / training.MODEL_FILE).write_bytes(b"an earlier run")
    trainer = training.Trainer(config(data8, run, max_steps=1), force=True)
    assert [p.name for p in run.iterdir()] == [training.MODEL_FILE]
    assert (run / training.MODEL_FILE).read_bytes() == b"an earlier run"
    assert not hasattr(trainer, "images") and not hasattr(trainer, "model")


def test_a_decaying_lr_schedule_resumes_exactly_after_an_interruption(
    data8, tmp_path, config, fit, state_tensors, monkeypatch
):
    """With a warm-up and a cosine decay sized to 8 steps, a run stopped (as by Ctrl-C) after step 3
    and resumed ends bit-identical to a straight one; metrics.jsonl's lr follows lr.factor."""
    from dtools.train.lr import factor

    opts = {"max_steps": 8, "lr": 3e-3, "warmup": 0.25, "lr_decay": "cosine", "ema_length": 0.2}
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(config(data8, straight, **opts))

    class StopAfterThree(loop.StopSignals):
        seen = 0

        @property
        def requested(self):  # the loop asks once per step
            StopAfterThree.seen += 1
            return StopAfterThree.seen >= 3

        @requested.setter
        def requested(self, value):
            pass

    with monkeypatch.context() as m:
        m.setattr(loop, "StopSignals", StopAfterThree)
        assert fit(config(data8, split, **opts)).stopped == "interrupted"
    assert read_header(split / training.STATE_FILE, "dtools.train-state")["step"] == 3
    assert fit(config(data8, split, **opts), resume=True).step == 8
    a, b = state_tensors(straight), state_tensors(split)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    lrs = [json.loads(x)["lr"] for x in (split / training.METRICS_FILE).read_text().splitlines()]
    assert lrs == pytest.approx([3e-3 * factor(s / 8, 0.25, "cosine") for s in range(8)])
    assert lrs[0] < lrs[1] > lrs[-1]  # up during the warm-up, then down


@pytest.mark.serial  # asserts on its wall time
def test_max_minutes_alone_sizes_the_run_in_time(data8, tmp_path, config, fit):
    """--max-minutes without --max-steps or --epochs: no step limit, the run ends at its minutes, and
    the lr schedule runs over the training time."""
    cfg = config(data8, tmp_path / "r", max_minutes=0.02, warmup=0.1, lr_decay="linear", save_every=1000)
    assert cfg.max_steps is None and cfg.time_sized() and cfg.total_steps() is None
    result = fit(cfg)
    assert result.stopped == "done" and result.total_steps is None and result.step > 2
    assert 1.2 <= result.elapsed < 5  # 0.02 min = 1.2 s, then one step and the checkpoint
    recs = [json.loads(x) for x in (tmp_path / "r" / training.METRICS_FILE).read_text().splitlines()]
    assert recs[-1]["lr"] < 0.2 * recs[len(recs) // 3]["lr"]  # linear decay to 0 at the end of the time
    assert read_header(tmp_path / "r" / training.STATE_FILE, "dtools.train-state")["step"] == result.step


@pytest.mark.parametrize("model", ["unet", "dcgan", "vae"])
def test_the_checkpoint_records_the_ema_that_ran(data8, tmp_path, config, fit, model):
    """A power EMA's run records its width and exponent, not the unused fixed decay (which it once
    did); a fixed-decay run records its decay."""
    from dtools.info import model_facts, model_rows

    opts = {} if model == "unet" else {"model_type": model, "base_channels": 8}
    if model != "unet":
        opts.update({k: None for k in ("channel_mult", "num_res_blocks", "attention_resolutions", "num_heads",
                                       "dropout")})
    run = tmp_path / "power"
    fit(config(data8, run, max_steps=2, save_every=2, ema_length=0.1, **opts))
    _, info = read_model(run / training.MODEL_FILE)
    assert "ema_decay" not in info and info["ema_length"] == 0.1
    assert info["ema_gamma"] == pytest.approx(6.94, abs=0.01)  # EDM2 sec. 3.1
    rows = dict(model_rows(model_facts(run / training.MODEL_FILE, info)))
    assert rows["EMA"].startswith("power EMA (EDM2), width 0.1 of the run"), rows
    fixed = tmp_path / "fixed"
    fit(config(data8, fixed, max_steps=2, save_every=2, ema_decay=0.9, **opts))
    _, info = read_model(fixed / training.MODEL_FILE)
    assert info["ema_decay"] == 0.9 and "ema_length" not in info


def test_an_edm_run_gives_the_network_c_in_x_t(data8, tmp_path, config, fit, monkeypatch):
    """`--param edm`: the training step hands the network diffusion.network_input's c_in x_t (checked
    against the formulas in tests/test_diffusion.py), not x_t, and the checkpoint says "edm"."""
    from dtools.unet import UNet

    given, seen = [], []
    real_input, real_forward = ddpm.network_input, UNet.forward

    def spy(s, param, x_t, t):
        out = real_input(s, param, x_t, t)
        given.append((param, x_t.clone(), out.clone()))
        return out

    def forward(self, x, t, y=None):
        seen.append(x.detach().clone())
        return real_forward(self, x, t, y)

    monkeypatch.setattr(ddpm, "network_input", spy)
    monkeypatch.setattr(UNet, "forward", forward)
    run = tmp_path / "run"
    result = fit(config(data8, run, max_steps=3, save_every=3, parameterization="edm", min_snr_gamma=0))
    assert result.step == 3 and all(np.isfinite(r["loss"]) for r in result.metrics)
    assert len(given) == len(seen) >= 3 and all(g[0] == "edm" for g in given)  # the steps, and any probe
    for (_, x_t, x_in), x in zip(given, seen, strict=True):
        assert torch.equal(x_in, x) and not torch.allclose(x_in, x_t)
    assert read_model(run / training.MODEL_FILE)[1]["parameterization"] == "edm"
