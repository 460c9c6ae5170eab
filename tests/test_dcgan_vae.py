"""The baselines' networks: DCGAN generator and discriminator scaled to the image size, the VAE, their
configs, and the checkpoint types that make them sample."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dtools.checkpoint import load_model, save_model
from dtools.dcgan import DCGANConfig, Discriminator, Generator
from dtools.errors import DtoolsError
from dtools.vae import VAE, VAEConfig, elbo_terms


@pytest.mark.parametrize("size,stages", [(8, 1), (16, 2), (32, 3), (64, 4)])
def test_the_stages_follow_log2_of_the_size(size, stages):
    cfg = DCGANConfig(image_size=size, channels=3, latent_dim=10, base_channels=4)
    torch.manual_seed(0)
    g, d = Generator(cfg), Discriminator(cfg)
    up = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    down = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(up) == stages + 1 and len(down) == stages + 1  # the stages, plus z -> 4x4 / 4x4 -> logit
    assert up[0].out_channels == 4 * 2 ** (stages - 1) and up[-1].in_channels == 4  # widths double inward
    x = g(torch.randn(3, 10))
    assert x.shape == (3, 3, size, size) and x.abs().max() <= 1  # tanh
    assert d(x).shape == (3,)
    # BatchNorm everywhere but on the generator's output and the discriminator's first layer (the paper)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == stages
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == stages - 1
    assert any(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in d.modules())


def test_weights_start_as_the_paper_says():
    torch.manual_seed(0)
    g = Generator(DCGANConfig(image_size=32, base_channels=16))
    w = torch.cat([m.weight.detach().flatten() for m in g.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    bn = torch.cat([m.weight.detach() for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(bn.mean()) - 1.0) < 0.01


def test_configs_round_trip_and_refuse_bad_values():
    cfg = DCGANConfig(image_size=16, channels=1, latent_dim=7, base_channels=5)
    assert DCGANConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    vae = VAEConfig(image_size=16, latent_dim=7)
    again = VAEConfig.from_dict(vae.to_dict())
    assert again == vae and isinstance(again, VAEConfig)
    for bad, match in (({"image_size": 24}, "power of two"), ({"image_size": 4}, "power of two"),
                       ({"channels": 2}, "channels must be 1 or 3"), ({"latent_dim": 0}, "positive"),
                       ({"ngf": 3}, "unknown key")):
        with pytest.raises(DtoolsError, match=match):
            DCGANConfig.from_dict({**cfg.to_dict(), **bad})


def test_vae_terms_are_the_gaussian_nll_and_the_closed_form_kl():
    torch.manual_seed(0)
    x, x_hat = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    mean, logvar = torch.randn(2, 5), torch.randn(2, 5)
    recon, kl = elbo_terms(x, x_hat, mean, logvar)
    # -log N(x; x̂, ½ I) = Σ (x - x̂)² + (D/2) log π
    nll = -torch.distributions.Normal(x_hat, 0.5 ** 0.5).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(recon + 0.5 * 192 * torch.log(torch.tensor(torch.pi)), nll, rtol=1e-5)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(5), torch.ones(5))
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, p).sum(1), rtol=1e-5)
    model = VAE(VAEConfig(image_size=8, latent_dim=5, base_channels=4))
    out, m, lv = model(x, torch.randn(2, 5))
    assert out.shape == x.shape and m.shape == lv.shape == (2, 5)


@pytest.mark.parametrize("model_type", ["dcgan", "vae"])
def test_a_checkpoint_of_each_builds_its_generator(tmp_path, model_type):
    cfg = (DCGANConfig if model_type == "dcgan" else VAEConfig)(image_size=8, latent_dim=6, base_channels=4)
    net = Generator(cfg) if model_type == "dcgan" else VAE(cfg).decoder
    path = tmp_path / "m.safetensors"
    save_model(path, {"ema": net.state_dict()}, config=cfg.to_dict(), model_type=model_type, meta={"step": 3})
    loaded = load_model(path)
    assert loaded.schedule is None and loaded.parameterization is None
    assert loaded.network.latent_dim == 6 and loaded.image_shape == (3, 8, 8)
    assert not loaded.network.training
