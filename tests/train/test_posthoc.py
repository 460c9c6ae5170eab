"""--posthoc-ema in a run: the snapshots it keeps, their resume, and `dtools ema` on them (the maths:
tests/test_posthoc_ema.py)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dtools import posthoc
from dtools.checkpoint import read_info, read_model
from dtools.cli import app
from dtools.posthoc_ema import TRACKED, snapshot_name

pytestmark = pytest.mark.usefixtures("one_thread")


def _names(run):
    return sorted(p.name for p in (run / "posthoc").iterdir())


def test_snapshots_are_checkpoints_of_the_tracked_emas(data8, tmp_path, config, fit):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=8, posthoc_ema=4, ema_length=0.1))
    assert _names(run) == sorted(snapshot_name(s, w) for s in (2, 4, 6, 8) for w in TRACKED)
    # the tracked 0.10 EMA is the run's own power EMA of 0.10, updated at the same steps
    final = read_model(run)[0]["ema"]
    sets, info = read_model(run / "posthoc" / snapshot_name(8, 0.1))
    assert set(sets) == {"ema"} and info["ema_length"] == 0.1 and info["step"] == 8
    assert all(torch.equal(final[k], sets["ema"][k]) for k in final)
    # and the post-hoc EMA of 0.10 at the end is that snapshot
    made, header = posthoc.reconstruct(run, 0.1, log=lambda _: None)
    assert all(torch.allclose(made[k].float(), final[k].float(), atol=1e-6) for k in final)
    assert header["ema_posthoc"]["snapshots"] == 8 and header["ema_posthoc"]["error"] < 1e-9
    # a width between the two is neither of them
    between, _ = posthoc.reconstruct(run, 0.07, log=lambda _: None)
    assert not torch.allclose(between["conv_in.weight"], final["conv_in.weight"])


def test_a_resumed_run_takes_the_snapshots_an_unbroken_one_does(data8, tmp_path, config, fit):
    """6 steps, then --resume to 12: the snapshots after the break are bit-identical to those of 12 steps
    straight (the tracked EMAs are in the training state); a snapshot newer than the checkpoint (a
    killed run's) is dropped; a run made longer keeps taking them at its new quarters."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(config(data8, straight, max_steps=12, posthoc_ema=4))
    fit(config(data8, split, max_steps=6, posthoc_ema=4))
    assert _names(split) == sorted(snapshot_name(s, w) for s in (2, 3, 5, 6) for w in TRACKED)
    stray = split / "posthoc" / snapshot_name(10, 0.05)
    stray.write_bytes((split / "posthoc" / snapshot_name(6, 0.05)).read_bytes())
    fit(config(data8, split, max_steps=12, posthoc_ema=4), resume=True)
    assert _names(split) == sorted(snapshot_name(s, w) for s in (2, 3, 5, 6, 9, 12) for w in TRACKED)
    for step in (9, 12):
        for w in TRACKED:
            a = read_model(straight / "posthoc" / snapshot_name(step, w))[0]["ema"]
            b = read_model(split / "posthoc" / snapshot_name(step, w))[0]["ema"]
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_new_run_with_force_drops_the_old_snapshots(data8, tmp_path, config, fit):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=4, posthoc_ema=2))
    fit(config(data8, run, max_steps=3, posthoc_ema=0), force=True)
    assert not list((run / "posthoc").iterdir())


def test_ema_command_writes_and_chooses(data8, tmp_path, config, fit, monkeypatch):
    from dtools.fid import ema_choice
    from dtools.fid.weights import INCEPTION_SHA256, Weights
    from tests.fid.conftest import FakeInception  # the real network is slow and is tested elsewhere

    monkeypatch.setattr(ema_choice, "find_weights", lambda path=None: Weights({}, INCEPTION_SHA256, "fake"))
    monkeypatch.setattr(ema_choice, "load_inception", lambda w, device="cpu": FakeInception())
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=8, posthoc_ema=4))
    cli = CliRunner()
    r = cli.invoke(app, ["ema", str(run), "--length", "0.12", "-o", str(run / "ema.safetensors")])
    assert r.exit_code == 0, r.output
    info = read_info(run / "ema.safetensors")
    assert info["ema_length"] == 0.12 and info["ema_posthoc"]["snapshots"] == 8 and info["step"] == 8
    assert set(read_model(run / "ema.safetensors")[0]) == {"ema", "raw"}  # the run's raw weights too
    assert "ema_decay" not in info
    r = cli.invoke(app, ["info", str(run / "ema.safetensors")])
    assert "post-hoc power EMA" in r.output
    # no overwrite without --force
    r = cli.invoke(app, ["ema", str(run), "--length", "0.1", "-o", str(run / "ema.safetensors")])
    assert r.exit_code != 0
    r = cli.invoke(app, ["ema", str(run), "--choose", "-n", "8", "--lengths", "0.05,0.1", "--json",
                         "-o", str(tmp_path / "best.safetensors"), "--plot", str(tmp_path / "ema.png"),
                         "--reference", str(data8)])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.splitlines()[-1])
    assert [row["ema_length"] for row in report["rows"]] == [0.05, 0.1]
    assert report["chosen"] == min(report["rows"], key=lambda row: row["fid"])["ema_length"]
    chosen = read_info(tmp_path / "best.safetensors")
    assert chosen["ema_length"] == report["chosen"] and chosen["ema_posthoc"]["chosen_by"]["samples"] == 8
    assert (tmp_path / "ema.png").stat().st_size > 1000
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # its temp folder is gone


@pytest.mark.parametrize("args, words", [
    ([], "give --length S"),
    (["--length", "0.1", "--choose"], "give --length S"),
    (["--length", "0.5"], "0.30"),
    (["--length", "0.1", "--plot", "x.png"], "--plot is for --choose"),
    (["--choose", "--lengths", "0.1,0.1"], "listed twice"),
    (["--length", "0.1", "-o", "RUN/model.safetensors", "--force"], "a file of the run itself"),
])
def test_ema_command_refuses_bad_options(data8, tmp_path, config, fit, args, words):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=4, posthoc_ema=2))
    args = [str(run / "model.safetensors") if a == "RUN/model.safetensors" else a for a in args]
    before = (run / "model.safetensors").read_bytes()
    r = CliRunner().invoke(app, ["ema", str(run), "-o", str(tmp_path / "out.safetensors"), *args])
    assert r.exit_code != 0 and words in r.output
    assert not (tmp_path / "out.safetensors").exists()
    assert (run / "model.safetensors").read_bytes() == before


def test_ema_command_on_a_run_without_snapshots_is_one_line(data8, tmp_path, config, fit):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=2))
    r = CliRunner().invoke(app, ["ema", str(run), "--length", "0.1", "-o", str(tmp_path / "o.safetensors")])
    assert r.exit_code == 1 and "--posthoc-ema" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["ema", str(tmp_path / "nope"), "--length", "0.1", "-o", str(tmp_path / "o")])
    assert r.exit_code == 1 and "not a run folder" in r.output


def test_a_snapshot_of_another_run_is_refused(data8, tmp_path, config, fit):
    a, b = tmp_path / "a", tmp_path / "b"
    fit(config(data8, a, max_steps=4, posthoc_ema=2))
    fit(config(data8, b, max_steps=4, posthoc_ema=2, base_channels=16))
    stranger = (b / "posthoc" / snapshot_name(4, 0.05)).read_bytes()
    (a / "posthoc" / snapshot_name(4, 0.05)).write_bytes(stranger)
    r = CliRunner().invoke(app, ["ema", str(a), "--length", "0.1", "-o", str(tmp_path / "o.safetensors")])
    assert r.exit_code == 1 and "another model" in r.output
    # a renamed file: its header says another step than its name
    b_posthoc = b / "posthoc"
    (b_posthoc / snapshot_name(4, 0.05)).rename(b_posthoc / snapshot_name(5, 0.05))
    r = CliRunner().invoke(app, ["ema", str(b), "--length", "0.1", "-o", str(tmp_path / "o.safetensors")])
    assert r.exit_code == 1 and "does not match its name" in r.output
