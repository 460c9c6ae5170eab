"""dtools.fid.inception: the name map onto torch-fidelity's layout, the converted network against the
TorchScript, the weights' sha256, and the logits head the Inception Score needs."""

from __future__ import annotations

import pytest
import torch

from dtools.errors import DtoolsError
from dtools.fid.inception import (
    InceptionV3,
    conv_name_map,
    feature_difference,
    tf_to_fidelity,
    weights_sha256,
)
from dtools.fid.weights import CONVERSION_ATOL, INCEPTION_SHA256, load_inception


def test_name_map_covers_every_torchscript_tensor_and_every_fidelity_conv(script, weights):
    names = conv_name_map()
    assert len(names) == 94 and len(set(names.values())) == 94
    ts_convs = {k.removeprefix("net.layers.").rpartition(".")[0] for k in script.state_dict()}
    assert ts_convs == set(names)
    converted = tf_to_fidelity(script.state_dict())
    assert set(converted) == set(weights.state_dict)  # the exact key set torch-fidelity's module loads
    for key, value in converted.items():
        assert value.shape == weights.state_dict[key].shape, key


def test_batch_norm_without_scale_becomes_scale_one(script):
    converted = tf_to_fidelity(script.state_dict())
    assert torch.equal(converted["Mixed_7c.branch_pool.bn.weight"], torch.ones(192))
    beta = script.state_dict()["net.layers.mixed_10.tower_2_conv.beta"]
    assert torch.equal(converted["Mixed_7c.branch_pool.bn.bias"], beta)
    assert converted["Conv2d_1a_3x3.bn.num_batches_tracked"].dtype == torch.int64


def test_converted_network_matches_the_torchscript_and_a_wrong_mapping_does_not(script, weights, net):
    assert feature_difference(script, net) <= CONVERSION_ATOL
    swapped = dict(weights.state_dict)  # two same-shaped convolutions exchanged: a plausible mapping bug
    a, b = "Mixed_6c.branch1x1.conv.weight", "Mixed_6d.branch1x1.conv.weight"
    swapped[a], swapped[b] = swapped[b], swapped[a]
    assert feature_difference(script, InceptionV3(swapped)) > 100 * CONVERSION_ATOL
    assert weights_sha256(swapped) != INCEPTION_SHA256


def test_sha256_ignores_the_logits_head_but_not_the_trunk(weights):
    with_head = {**weights.state_dict, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    assert weights_sha256(with_head) == INCEPTION_SHA256
    nudged = dict(weights.state_dict)
    nudged["Conv2d_1a_3x3.bn.running_mean"] = nudged["Conv2d_1a_3x3.bn.running_mean"] + 1e-6
    assert weights_sha256(nudged) != INCEPTION_SHA256


def test_inception_score_needs_the_logits_head(weights):
    with pytest.raises(DtoolsError, match="1008-class head"):
        load_inception(weights, logits=True)
