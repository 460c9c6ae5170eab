"""dtools.sampler_specs: one spec per sampler, and nothing else to touch. A throwaway sampler, registered
here as one new module plus one registry line, is validated, counted, sampled, swept and listed in
`dtools sample --help` like the others."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import torch

from dtools import sampler_specs
from dtools.diffusion import Schedule, spaced_timesteps
from dtools.errors import DtoolsError, OptionError
from dtools.sampler_specs import DEFAULT_SAMPLER, SAMPLERS, SamplerSpec, check_applies, lookup
from dtools.samplers import check_options, generate
from dtools.schedules import make_schedule

T = 100
SCHEDULE = Schedule.from_betas(make_schedule("cosine", T))
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "v0.1.0"

pytestmark = pytest.mark.usefixtures("one_thread")


def counting_model(calls: list):
    """A network that predicts a fixed fraction of x_t as ε and records each call's timestep."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return 0.3 * x_t

    return model_fn


def euler(denoise, x, chain, noise, callback=None):
    """Euler's method on the probability-flow ODE in x̂ = x/α, σ̂ = σ/α (= DDIM at η = 0)."""
    for i, k in enumerate(reversed(range(len(chain)))):
        x0, eps = denoise(x, int(chain.timesteps[k]))
        chain.report(callback, i, k, x, x0)
        ab_prev = chain.alpha_cumprod_prev(k)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1.0 - ab_prev - 0.0, 0.0)) * eps
    return x


@pytest.fixture
def throwaway(monkeypatch):
    """`euler`, added as a sampler is added: one new module, one line in SAMPLERS."""
    module = types.ModuleType("throwaway_euler")
    module.euler = euler
    monkeypatch.setitem(sys.modules, "throwaway_euler", module)
    spec = SamplerSpec("euler", "Euler, 1 call/step", "throwaway_euler:euler", default_steps=7)
    monkeypatch.setitem(SAMPLERS, "euler", spec)
    return spec


def test_every_spec_is_complete_and_loads():
    assert DEFAULT_SAMPLER in SAMPLERS
    for name, spec in SAMPLERS.items():
        assert spec.name == name and spec.help and callable(spec.load())
        assert spec.steps_for(T) == (T if spec.default_steps == "T" else spec.default_steps)
        calls = f"{spec.calls_per_step} call{'s' if spec.calls_per_step > 1 else ''}/step"
        assert calls in spec.help, (name, spec.help)  # its help line states its network calls
    assert SAMPLERS["heun"].nfe(10) == 18 and SAMPLERS["heun"].nfe_formula() == "2*steps-2"
    assert SAMPLERS["ddim"].nfe(10) == 10 and SAMPLERS["ddim"].nfe_formula() == "steps"


def test_the_registry_is_read_without_torch():
    import subprocess

    probe = ("import sys, dtools.sampler_specs, dtools.commands.sample, dtools.commands.sweep; "
             "print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "False", res.stdout + res.stderr


def test_names_and_options_are_checked_once_with_todays_messages():
    names = r"ddpm, ddim, dpm\+\+2m, heun"
    with pytest.raises(OptionError, match=f"unknown sampler 'euler'; choose one of {names}$"):
        lookup("euler")
    with pytest.raises(OptionError, match="unknown sampler 'x' in 'x:5'; choose from ddpm,") as e:
        lookup("x", "--samplers", "x:5")
    assert e.value.option == "--samplers"
    with pytest.raises(DtoolsError, match="^--eta applies to --sampler ddim, not dpm\\+\\+2m$"):
        check_applies("dpm++2m", eta=0.5, variance=None)
    with pytest.raises(DtoolsError, match="^--variance applies to --sampler ddpm, not heun$"):
        check_applies("heun", eta=None, variance="beta")
    assert check_applies("ddim", eta=0.5, variance=None) is SAMPLERS["ddim"]
    assert SAMPLERS["ddim"].arguments({"eta": None, "variance": "beta"}) == {"eta": 0.0}
    assert SAMPLERS["ddpm"].arguments({"eta": 0.5, "variance": "beta"}) == {"variance": "beta"}


def test_a_new_sampler_is_one_module_and_one_registry_line(throwaway):
    assert lookup("euler") is throwaway and check_options("euler", "eps") is throwaway
    calls: list[int] = []
    x = generate(counting_model(calls), SCHEDULE, "eps", (3, 4, 4), [1, 2], sampler="euler")
    # its default steps, its network calls, the timesteps of its chain
    assert calls == spaced_timesteps(T, 7, "trailing")[::-1].tolist() and len(calls) == throwaway.nfe(7)
    ddim = generate(counting_model([]), SCHEDULE, "eps", (3, 4, 4), [1, 2], sampler="ddim", steps=7)
    assert torch.equal(x, ddim)
    # an option it does not take is checked, and not passed to its function (which would refuse it)
    generate(counting_model([]), SCHEDULE, "eps", (3, 4, 4), [1], sampler="euler", eta=0.5)
    with pytest.raises(OptionError, match="--eta"):
        generate(counting_model([]), SCHEDULE, "eps", (3, 4, 4), [1], sampler="euler", eta=2.0)
    with pytest.raises(DtoolsError, match="--eta applies to --sampler ddim, not euler"):
        check_applies("euler", eta=0.5)


def test_a_new_sampler_is_known_to_sample_sweep_and_help(throwaway, tmp_path):
    import importlib

    import numpy as np

    from dtools.fid.sweep import Setting, SweepConfig, parse_settings, resolve_settings
    from dtools.sample import SampleConfig, Sink, run

    sample_command = importlib.import_module("dtools.commands.sample")  # the module, not its function
    assert "euler: Euler, 1 call/step" in sample_command.sampler_help()
    assert sample_command.default_steps() == "T for ddpm, 7 for euler, 20 otherwise"
    assert parse_settings("euler:5,euler") == [Setting("euler", 5), Setting("euler", None)]
    ckpt = FIXTURE / "run" / "model.safetensors"
    settings = resolve_settings(SweepConfig(ckpt, "ref", "euler,ddim:4", str(tmp_path)))
    assert settings == [Setting("euler", 7), Setting("ddim", 4)]
    lines: list[str] = []
    cfg = SampleConfig(ckpt, n=2, sampler="euler", device="cpu", precision="fp32")
    cfg.check()
    sink = Sink(str(tmp_path / "euler.npy"), cfg.count, force=False, log=lines.append)
    run(cfg, sink, log=lines.append)
    sink.close()
    assert "euler, 7 steps (7 network calls/image)" in lines[0]
    assert np.load(tmp_path / "euler.npy").shape == (2, 8, 8, 3)


def test_the_default_sampler_is_named_once():
    import inspect

    from dtools import sample
    from dtools.samplers import generation

    for fn in (generation.sample, generation.generate):
        assert inspect.signature(fn).parameters["sampler"].default == DEFAULT_SAMPLER
        assert inspect.signature(fn).parameters["steps"].default is None  # the spec's default steps
    assert sample.SampleConfig(Path("x")).sampler_name == DEFAULT_SAMPLER
    assert sampler_specs.option_default("eta") == 0.0
    assert sampler_specs.option_default("variance") == "posterior"

