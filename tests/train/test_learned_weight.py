"""`dtools train --learned-weight`: EDM2's learned loss weighting (dtools/train/uncertainty.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dtools import train as training
from dtools.diffusion import Schedule
from dtools.errors import DtoolsError
from dtools.info import inspect
from dtools.schedules import make_schedule
from dtools.train.uncertainty import LogVariance, c_noise, uncertainty_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # bit-exact comparisons: one thread sums in one order


def test_u_settles_at_the_log_of_each_noise_levels_mean_loss():
    """Minimizing L/e^u + u over draws of t puts u(σ_t) at ln E[L | t]: here a loss whose mean varies
    over three orders of magnitude across the schedule, drawn with noise around that mean."""
    s = Schedule.from_betas(make_schedule("cosine", 100))
    x = c_noise(s)
    log_mean = 2.0 * torch.tanh(2 * x) - 3.0  # [T], from about -5 to -1
    torch.manual_seed(0)
    u_net = LogVariance(s)
    opt = torch.optim.Adam(u_net.parameters(), lr=1e-2)
    for i in range(2500):
        if i == 1500:  # then a smaller step, so that the draws' noise averages out
            opt.param_groups[0]["lr"] = 1e-3
        t = torch.randint(0, s.T, (256,))
        loss = log_mean[t].exp() * torch.empty(256).exponential_()  # mean exp(log_mean), heavy spread
        opt.zero_grad()
        uncertainty_loss(loss, u_net(t)).mean().backward()
        opt.step()
    with torch.no_grad():
        u = u_net(torch.arange(s.T))
    assert (u - log_mean).abs().max() < 0.3  # against a range of 4: fixed features fit it only so far
    assert (u - log_mean).abs().mean() < 0.1


def test_c_noise_is_finite_at_zero_terminal_snr():
    """EDM's ln(σ)/4 of every timestep, clamped where ᾱ_t = 0 (σ infinite), so u stays finite there."""
    s = Schedule.from_betas(make_schedule("linear", 100, zero_terminal_snr=True))
    x = c_noise(s)
    assert bool(torch.isfinite(x).all()) and bool((x[1:] >= x[:-1]).all())
    ab = s.alphas_cumprod[10].item()
    assert x[10].item() == pytest.approx(0.25 * 0.5 * math.log((1 - ab) / ab), rel=1e-6)
    assert bool(torch.isfinite(LogVariance(s)(torch.tensor([0, 99]))).all())


def test_u_starts_at_zero_so_the_first_step_is_the_plain_one(data8, tmp_path, config, fit):
    """u = 0 at the start: the first step's objective is the weighted MSE itself and moves the network
    exactly as a run without the option; after a few steps u has moved and the runs differ."""
    runs = {}
    for name, learned in (("plain", False), ("learned", True)):
        for steps in (1, 4):
            run = tmp_path / f"{name}{steps}"
            fit(config(data8, run, max_steps=steps, parameterization="v", learned_weight=learned))
            runs[name, steps] = load_file(str(run / training.MODEL_FILE))
    first_plain, first_learned = runs["plain", 1], runs["learned", 1]
    assert set(first_plain) == set(first_learned)
    assert all(torch.equal(first_plain[k], first_learned[k]) for k in first_plain)
    later_plain, later_learned = runs["plain", 4], runs["learned", 4]
    assert any(not torch.equal(later_plain[k], later_learned[k]) for k in later_plain)


def test_interrupted_and_resumed_learned_weight_run_is_bit_exact(data8, tmp_path, config, fit, state_tensors):
    """u and its Adam travel in the training state: 6 steps straight == 3, stop, --resume to 6 (with
    gradient accumulation; a constant lr, as in test_loop's bit-exact test)."""
    opts = {"learned_weight": True, "batch_size": 10, "grad_accum": 2, "lr_decay": "constant", "warmup": 0.0}
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(config(data8, straight, max_steps=6, **opts))
    fit(config(data8, split, max_steps=3, **opts))
    fit(config(data8, split, max_steps=6, **opts), resume=True)
    a, b = state_tensors(straight), state_tensors(split)
    assert {"logvar.weight", "logvar.bias", "adam_logvar.weight.exp_avg"} <= set(a)
    assert set(a) == set(b) and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert a["logvar.weight"].abs().sum() > 0  # u has learned something: the check can fail
    model = load_file(str(straight / training.MODEL_FILE))
    assert not any("logvar" in k for k in model)  # sampling has no use for u: the model file lacks it
    info = inspect(straight / training.MODEL_FILE)  # `dtools info` says how it was trained
    assert info.facts["learned_weight"] is True and "learned loss weight u(σ)" in info.text()
    # bench/learned_weight.py plots what u learned (docs/quality.md's picture)
    script = Path(__file__).resolve().parents[2] / "bench" / "learned_weight.py"
    res = subprocess.run([sys.executable, str(script), str(straight), "-o", str(tmp_path / "w.png")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "straight: u from" in res.stdout and (tmp_path / "w.png").read_bytes()[:4] == b"\x89PNG"


def test_learned_weight_is_recorded_kept_on_resume_and_refused_elsewhere(data8, tmp_path, betas, config, fit):
    shape = (100, 16, 16, 3)
    plain = training.new_config("d", "r", "cosine", betas, shape, {}).to_dict()
    assert "learned_weight" not in plain  # runs of earlier versions resume unchanged
    saved = training.new_config("d", "r", "cosine", betas, shape, {"learned_weight": True}).to_dict()
    assert saved["learned_weight"] is True
    assert training.resume_config(saved, betas, {"max_steps": 10}).learned_weight is True
    assert training.resume_config(plain, betas, {"max_steps": 10}).learned_weight is False
    with pytest.raises(DtoolsError, match="--learned-weight cannot change"):
        training.resume_config(saved, betas, {"learned_weight": False})
    with pytest.raises(DtoolsError, match="^--learned-weight applies to --model unet, not vae"):
        training.configure(str(tmp_path / "r"), str(data8), None,
                           {"model_type": "vae", "learned_weight": True})
