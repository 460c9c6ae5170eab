"""The model types of dtools: one spec each, in one registry, MODEL_TYPES.

A spec says everything the rest of dtools asks of a model type: its `--model` name (also its
checkpoint's "model_type") and help line; its network config class, whose `from_dict`/`to_dict` are
the checkpoint header's "model", whose `build()` makes the network a checkpoint holds (what sampling
runs), `image_shape()` the images it makes and `trained()` every network a run trains; its training
method (a dtools.train.method.Method); whether it is a denoiser with a noise schedule and a sampler
chain (then --beta, --param and the loss options apply, and its header has "parameterization" and
"betas"); whether its network and recipe come from a `--preset` or from its own defaults.

This module imports neither torch nor any network: `--help` reads it. The config class and the method
are named as "module:attribute" and imported when first used, so the registry sits below everything
that uses it (checkpoint, train, sample, info, export, the commands).

Adding a model type: write its network (with a config class as above, unless it reuses one) and its
training Method, then add one line to MODEL_TYPES (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dtools.errors import DtoolsError


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ModelType:
    """What a model type is to dtools (see the module's docstring)."""

    name: str  # --model, and a checkpoint's "model_type"
    help: str  # what --model's help says of it
    config: str  # "module:Class": the network config (from_dict, to_dict, build, image_shape, trained)
    method: str  # "module:Class": its training method (dtools.train.method.Method)
    network: str  # what `dtools info` calls the network a checkpoint holds
    schedule: bool = False  # a denoiser: a noise schedule and a sampler chain
    presets: bool = False  # its network and recipe come from --preset (dtools.train.presets)
    # its own recipe (TrainConfig fields) over the run cadence of the preset for its image size
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    losses: tuple[str, ...] = ("loss",)  # the losses its steps log (metrics.jsonl, the bar, `dtools info`)
    exports: bool = False  # maps to a diffusers UNet2DModel (`dtools export`)

    def config_class(self) -> Any:
        return _resolve(self.config)

    def method_class(self) -> Any:
        return _resolve(self.method)

    def network_config(self, config: dict[str, Any]) -> Any:
        """A header's "model" as this type's config object (checked: a bad one is a one-line error)."""
        return self.config_class().from_dict(config)


# their sources' constant learning rate and the presets' fixed-decay EMA
_CONSTANT = {"warmup": 0.0, "lr_decay": "constant", "ema_length": None}

MODEL_TYPES: dict[str, ModelType] = {m.name: m for m in (
    ModelType("unet", "unet (the DDPM)", "dtools.unet:UNetConfig", "dtools.train.ddpm:Ddpm", "U-Net",
              schedule=True, presets=True, exports=True),
    # Radford et al. 2016, sec. 3: mini-batches of 128, Adam with lr 0.0002 and β1 0.5 (gan.ADAM_BETAS);
    # one discriminator update per generator update, as in the paper and PyTorch's example
    ModelType("dcgan", "dcgan (Radford et al. 2016; Adam lr 2e-4, β1 0.5, batch 128)",
              "dtools.dcgan:DCGANConfig", "dtools.train.gan:Dcgan", "DCGAN generator",
              losses=("loss_d", "loss_g"),
              defaults=MappingProxyType({"lr": 2e-4, "batch_size": 128, "d_steps": "1:1", **_CONSTANT})),
    # pytorch/examples vae/main.py: Adam with lr 1e-3, batches of 128; KL weight 1: the plain ELBO
    ModelType("vae", "vae (a convolutional VAE with a Gaussian decoder; lr 1e-3, batch 128)",
              "dtools.vae:VAEConfig", "dtools.train.vae:Vae", "VAE decoder", losses=("loss", "recon", "kl"),
              defaults=MappingProxyType({"lr": 1e-3, "batch_size": 128, "kl_weight": 1.0, **_CONSTANT})),
)}
# --model when none is given; also what a header without "model_type" holds (dtools 0.1.0)
DEFAULT_MODEL = "unet"
MODELS = tuple(MODEL_TYPES)
LATENT = tuple(name for name, m in MODEL_TYPES.items() if not m.schedule)  # z -> image in one call


# Which model types a training option applies to (dtools.train.config), as a test of the spec
def any_model(m: ModelType) -> bool:
    return True


def scheduled(m: ModelType) -> bool:
    """The denoisers: the options of the noise schedule, the loss and the chain."""
    return m.schedule


def with_presets(m: ModelType) -> bool:
    return m.presets


def only(*names: str) -> Callable[[ModelType], bool]:
    """An option of the named model types' own recipes (e.g. a GAN's update ratio)."""
    return lambda m: m.name in names


def lookup_model(name: str, what: str = "--model") -> ModelType:
    """The spec of `name`; an unknown name is a one-line error naming `what` and the known ones."""
    spec = MODEL_TYPES.get(name)
    if spec is None:
        raise DtoolsError(f"unknown {what} {name!r}; choose one of {', '.join(MODEL_TYPES)}")
    return spec
