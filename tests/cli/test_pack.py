"""`dtools pack`: a run made small (one set of weights, half precision) that samples like the run."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dtools.checkpoint import load_model, read_info, read_model, save_model
from dtools.cli import app

TINY = ["--beta", "cosine", "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
        "--attention", "4", "--heads", "2", "--batch", "8", "--log-every", "1", "--ema", "0.9"]

pytestmark = pytest.mark.usefixtures("one_thread")


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> pathlib.Path:
    """An 8-step run with its early snapshot (the guide) at step 1."""
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))
    from conftest import make_tiny_pngs

    base = tmp_path_factory.mktemp("pack")
    make_tiny_pngs(base / "data", 6)
    out = base / "run"
    result = invoke("train", base / "data", "-o", out, *TINY, "--max-steps", 8, "--sample-every", 0)
    assert result.exit_code == 0, result.stderr
    assert (out / "guide.safetensors").is_file()
    return out


def dtypes(path: pathlib.Path) -> set[str]:
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def data_bytes(path: pathlib.Path) -> int:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    return path.stat().st_size - 8 - n


def test_a_pack_is_the_ema_in_float16_with_its_provenance(run, tmp_path):
    out = tmp_path / "small"
    result = invoke("pack", run, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["guide.safetensors", "model.safetensors"]
    for name in ("model.safetensors", "guide.safetensors"):
        assert dtypes(out / name) == {"F16"}
        info = read_info(out / name)
        assert info["weights"] == ["ema"] and info["step"] == read_info(run / name)["step"]
        packed = info["packed"]
        assert packed["from"] == str(run / name) and len(packed["sha256"]) == 64
        assert (packed["weights"], packed["dtype"]) == ("ema", "float16")
        assert 0 < packed["max_rel_error"] <= 2 ** -11
        # a quarter of the source's tensor bytes: one set of two, two bytes of four
        assert data_bytes(out / name) * 4 == data_bytes(run / name)
        # the weights are the EMA's, rounded
        ema = read_model(out / name)[0]["ema"]
        source = read_model(run / name)[0]["ema"]
        for k, w in ema.items():
            torch.testing.assert_close(w.float(), source[k], rtol=2 ** -10, atol=1e-7)
    text = invoke("info", out).stdout
    assert text.startswith(f"{out}: packed model (`dtools pack`)\n"), text
    assert f"from {run / 'model.safetensors'} (sha256 " in text and "ema weights in float16" in text
    assert "weights held: ema" in text and "guide     " in text and "samples " not in text
    facts = json.loads(invoke("info", out / "model.safetensors", "--json").stdout)
    assert facts["packed"]["dtype"] == "float16" and facts["step"] == 8


def test_a_pack_samples_like_its_run(run, tmp_path):
    out = tmp_path / "small"
    assert invoke("pack", run, "-o", out).exit_code == 0
    args = ["-n", 4, "--steps", 4, "--seed", 3, "--device", "cpu", "--precision", "fp32"]
    assert invoke("sample", run, "-o", tmp_path / "a.npy", *args).exit_code == 0
    assert invoke("sample", out, "-o", tmp_path / "b.npy", *args).exit_code == 0
    a = np.load(tmp_path / "a.npy", allow_pickle=False).astype(np.int16)
    b = np.load(tmp_path / "b.npy", allow_pickle=False).astype(np.int16)
    assert a.shape == b.shape == (4, 8, 8, 3)
    assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.1, np.abs(a - b).max()
    # both were autoguided: without the guide the same seeds give other images
    c = tmp_path / "c.npy"
    assert invoke("sample", out, "-o", c, *args, "--guidance", 0).exit_code == 0
    assert np.abs(np.load(c, allow_pickle=False).astype(np.int16) - b).max() > 2


def test_dtypes_weights_and_model_only(run, tmp_path):
    full = tmp_path / "full"
    result = invoke("pack", run, "-o", full, "--dtype", "float32", "--weights", "raw", "--model-only")
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in full.iterdir()] == ["model.safetensors"]
    info = read_info(full / "model.safetensors")
    assert dtypes(full / "model.safetensors") == {"F32"} and info["weights"] == ["raw"]
    assert info["packed"]["max_rel_error"] == 0
    raw = load_model(run, "raw").network.state_dict()
    again = load_model(full, "raw").network.state_dict()
    assert all(torch.equal(raw[k], again[k]) for k in raw)
    assert invoke("pack", run, "-o", tmp_path / "bf", "--dtype", "bfloat16").exit_code == 0
    assert dtypes(tmp_path / "bf" / "guide.safetensors") == {"BF16"}
    # a pack of a pack keeps the first one's provenance
    assert invoke("pack", tmp_path / "bf", "-o", tmp_path / "bf2", "--dtype", "float32").exit_code == 0
    twice = read_info(tmp_path / "bf2" / "model.safetensors")["packed"]
    assert twice["earlier"]["from"] == str(run / "model.safetensors")


def test_nothing_is_overwritten_without_force(run, tmp_path):
    out = tmp_path / "small"
    assert invoke("pack", run, "-o", out).exit_code == 0
    before = (out / "guide.safetensors").read_bytes()
    result = invoke("pack", run, "-o", out, "--dtype", "bfloat16")
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "--force" in result.stderr
    assert (out / "guide.safetensors").read_bytes() == before
    assert invoke("pack", run, "-o", out, "--dtype", "bfloat16", "--force").exit_code == 0
    assert dtypes(out / "model.safetensors") == {"BF16"}
    # a model without a guide is not packed beside another model's guide...
    (out / "model.safetensors").unlink()
    result = invoke("pack", run, "-o", out, "--model-only")
    assert result.exit_code == 1 and "guide" in result.stderr, result.stderr
    # ...and with --force the stale guide goes
    assert invoke("pack", run, "-o", out, "--model-only", "--force").exit_code == 0
    assert not (out / "guide.safetensors").exists()
    result = invoke("pack", out, "-o", out, "--force")
    assert result.exit_code == 1 and "its own source" in result.stderr, result.stderr
    (tmp_path / "file").write_text("x")
    result = invoke("pack", run, "-o", tmp_path / "file")
    assert result.exit_code == 1 and "is a file" in result.stderr


def test_bad_sources_are_one_line_errors(run, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    for src in (junk, tmp_path / "missing.safetensors", tmp_path):
        result = invoke("pack", src, "-o", tmp_path / "o")
        assert result.exit_code == 1 and result.stderr.startswith("Error: "), result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    # a weight float16 cannot hold: refused, naming the way out
    sets, info = read_model(run)
    ema = dict(sets["ema"])
    name = next(iter(ema))
    ema[name] = ema[name] + 1e6
    meta = {k: info[k] for k in ("parameterization", "betas", "step")}
    save_model(tmp_path / "big.safetensors", {"ema": ema}, config=info["model"], meta=meta)
    result = invoke("pack", tmp_path / "big.safetensors", "-o", tmp_path / "o2")
    assert result.exit_code == 1 and "overflows float16" in result.stderr and "bfloat16" in result.stderr
    assert not (tmp_path / "o2" / "model.safetensors").exists()
    result = invoke("pack", tmp_path / "big.safetensors", "-o", tmp_path / "o3", "--dtype", "bfloat16")
    assert result.exit_code == 0, result.stderr
    # a damaged guide beside a good model: refused before anything is written
    import shutil

    shutil.copy(run / "model.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "guide.safetensors").write_bytes((run / "guide.safetensors").read_bytes()[:5000])
    result = invoke("pack", tmp_path / "model.safetensors", "-o", tmp_path / "o4")
    assert result.exit_code == 1 and "guide.safetensors" in result.stderr, result.stderr
    assert not (tmp_path / "o4").exists()


def test_a_pack_starts_a_new_run(run, tmp_path):
    out = tmp_path / "small"
    assert invoke("pack", run, "-o", out).exit_code == 0
    packed = out / "model.safetensors"
    result = invoke("train", run.parent / "data", "-o", tmp_path / "more", "--init-from", packed,
                    "--max-steps", 1, "--batch", 4, "--sample-every", 0)
    assert result.exit_code == 0, result.stderr
    assert read_info(tmp_path / "more" / "model.safetensors")["train"]["init_from"] == str(packed)
