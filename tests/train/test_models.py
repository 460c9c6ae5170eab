"""One spec per model type (dtools.models): every spec resolves to a network config and a training
method that agree with it, the command line's choices come from the registry, and a model type added
by one registry entry trains, checkpoints, samples and describes itself with no other change."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dtools import models
from dtools import train as training
from dtools.checkpoint import load_model, read_info
from dtools.errors import DtoolsError
from dtools.info import inspect
from dtools.models import MODEL_TYPES, ModelType, lookup_model
from dtools.samplers import generate
from dtools.train.config import applies, check_applies
from dtools.train.ddpm import Ddpm
from dtools.train.method import Method

pytestmark = pytest.mark.usefixtures("one_thread")

NETWORK_CONFIG = {"from_dict", "to_dict", "build", "image_shape", "trained"}


@pytest.mark.parametrize("name", list(MODEL_TYPES))
def test_every_spec_resolves_to_a_config_class_and_a_method_of_its_own(name):
    spec = MODEL_TYPES[name]
    assert spec.name == name
    assert NETWORK_CONFIG <= set(dir(spec.config_class()))
    method = spec.method_class()
    assert issubclass(method, Method) and method.model_type == name
    assert spec.schedule == (method is Ddpm or issubclass(method, Ddpm))


def test_the_registry_imports_no_torch_and_lists_the_command_line_choices(runner):
    code = "import sys, dtools.models, dtools.choices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    from dtools.cli import app

    text = runner.invoke(app, ["train", "--help"], terminal_width=200).output
    assert f"[{'|'.join(MODEL_TYPES)}]" in text.replace(" ", "")


def test_an_unknown_model_type_is_one_line():
    with pytest.raises(DtoolsError, match=r"unknown --model 'gan'; choose one of unet, dcgan, vae"):
        lookup_model("gan")


def test_a_network_option_applies_where_the_config_class_has_its_field():
    assert applies("channel_mult", "unet") and not applies("channel_mult", "dcgan")
    assert applies("latent_dim", "vae") and not applies("latent_dim", "unet")
    assert all(applies("base_channels", m) for m in MODEL_TYPES)
    with pytest.raises(DtoolsError, match=r"--latent-dim applies to --model dcgan or vae, not unet; drop it"):
        check_applies({"latent_dim": 8}, "unet")
    with pytest.raises(DtoolsError, match=r"--min-snr-gamma applies to --model unet, not vae"):
        check_applies({"min_snr_gamma": 5.0}, "vae")


class Toy(Ddpm):
    """A throwaway model type: the DDPM under another name, to show what one registry entry buys."""

    model_type = "toy"


@pytest.fixture
def toy(monkeypatch):
    spec = ModelType("toy", "toy (a test's DDPM)", "dtools.unet:UNetConfig", f"{__name__}:Toy", "U-Net",
                     schedule=True, presets=True)
    monkeypatch.setitem(models.MODEL_TYPES, "toy", spec)
    return spec


def test_a_model_type_added_by_one_registry_entry_trains_samples_and_describes_itself(
    toy, data8, tmp_path, config, fit
):
    run = tmp_path / "run"
    cfg = config(data8, run, model_type="toy", max_steps=4, save_every=4)
    assert cfg.to_dict()["model_type"] == "toy" and cfg.T == 100  # a denoiser: its options apply
    result = fit(cfg)
    assert (result.step, result.stopped) == (4, "done")
    assert read_info(run)["model_type"] == "toy"
    loaded = load_model(run)
    assert loaded.schedule is not None and loaded.image_shape == (3, 8, 8)
    model_fn = lambda x, t: loaded.network(x, t)  # noqa: E731
    x = generate(model_fn, loaded.schedule, loaded.parameterization, loaded.image_shape, [0, 1], steps=3)
    assert x.shape == (2, 3, 8, 8) and torch.isfinite(x).all()
    rows = dict(inspect(run / training.MODEL_FILE).rows)
    assert rows["model"].startswith("toy: U-Net 8x8x3, 8 base channels x (1,2)"), rows["model"]
    resumed = fit(training.configure(str(run), None, None, {"max_steps": 6}, resume=True), resume=True)
    assert resumed.step == 6


def test_a_checkpoint_conditioned_on_an_unknown_kind_is_refused(data8, tmp_path, config, fit):
    from dtools.tensorfile import load_tensors, read_header, save_tensors

    run = tmp_path / "run"
    fit(config(data8, run, max_steps=1, save_every=1))
    tensors, header = load_tensors(run / training.MODEL_FILE, "dtools.model")
    assert load_model(run).condition is None
    save_tensors(tmp_path / "c.safetensors", tensors, {**header, "condition": {"kind": "text"}}, True)
    assert read_header(tmp_path / "c.safetensors", "dtools.model")["condition"] == {"kind": "text"}
    with pytest.raises(DtoolsError, match=r"conditioned on 'text', which this dtools cannot use"):
        load_model(tmp_path / "c.safetensors")
    # a class condition must name one class per class of the network
    bad = {**header, "condition": {"kind": "class", "classes": ["a", "b"]}}
    save_tensors(tmp_path / "b.safetensors", tensors, bad, True)
    with pytest.raises(DtoolsError, match=r"not an unconditional network's"):
        load_model(tmp_path / "b.safetensors")
    conditional = {**header, "model": {**header["model"], "num_classes": 2}}
    save_tensors(tmp_path / "n.safetensors", tensors, conditional, True)
    with pytest.raises(DtoolsError, match=r"names no classes"):
        load_model(tmp_path / "n.safetensors")

