"""Class-conditional models end to end: labelled data -> `dtools train` (class embedding, label dropout,
the classes in the header) -> `dtools sample --class/--per-class/--guidance/--guide`, and every bad
input of them in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtools.checkpoint import read_info
from dtools.cli import app
from dtools.labels import LABELS_FILE, read_labels, write_labels

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
TRAIN = ["--max-steps", "160", "--batch-size", "32", "--base-channels", "16", "--channel-mult", "1,2",
         "--attention", "none", "--res-blocks", "1", "--lr", "2e-3", "--sample-every", "0",
         "--save-every", "160", "--precision", "fp32", "--ema", "0.9"]


def labelled_folder(folder: Path, n: int = 96, size: int = 8) -> Path:
    """n images of three flat colours with noise, class i % 3, and their dataset.json."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    names, labels = [], []
    for i in range(n):
        c = i % 3
        base = np.array(list(COLOURS.values())[c], dtype=float)
        img = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(folder / name)
        names.append(name)
        labels.append(c)
    write_labels(folder, names, labels, list(COLOURS))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("cond")
    data = labelled_folder(root / "data")
    run = root / "run"
    res = CliRunner().invoke(app, ["train", str(data), "-o", str(run), *TRAIN])
    assert res.exit_code == 0, res.output
    return data, run, res.output


def test_labelled_data_trains_a_class_conditional_model(trained):
    data, run, output = trained
    assert "conditioned on 3 classes (label dropout 0.1" in output
    info = read_info(run)
    assert info["condition"] == {"kind": "class", "classes": ["red", "green", "blue"]}
    assert info["model"]["num_classes"] == 3
    assert info["train"]["classes"] == ["red", "green", "blue"]


def test_info_shows_the_classes(trained, runner):
    _, run, _ = trained
    res = runner.invoke(app, ["info", str(run / "model.safetensors")])
    assert res.exit_code == 0, res.output
    assert "3: 0=red, 1=green, 2=blue" in res.output
    res = runner.invoke(app, ["info", str(run)])
    assert f"guide     {run / 'guide.safetensors'} (step 20" in res.output, res.output


def test_the_model_follows_its_class(trained, runner, tmp_path):
    """Each row of --per-class has its class's colour: the dominant channel is the class's."""
    _, run, _ = trained
    out = tmp_path / "pc"
    res = runner.invoke(app, ["sample", str(run), "--per-class", "4", "--steps", "10", "-o", str(out)])
    assert res.exit_code == 0, res.output
    files = sorted(out.glob("*.png"))
    assert len(files) == 12
    labels = read_labels(out)
    assert labels is not None and labels.classes == ("red", "green", "blue")
    for f in files:
        c = labels.of[f.name]
        mean = np.asarray(Image.open(f), dtype=float).mean(axis=(0, 1))  # (3,)
        assert int(np.argmax(mean)) == c, (f.name, c, mean)


def test_a_class_by_name_or_index_and_guidance(trained, runner, tmp_path):
    _, run, _ = trained
    a = runner.invoke(app, ["sample", str(run), "--class", "blue", "-n", "3", "--steps", "8",
                            "-o", str(tmp_path / "a.npy")])
    b = runner.invoke(app, ["sample", str(run), "--class", "2", "-n", "3", "--steps", "8",
                            "-o", str(tmp_path / "b.npy")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert "class 2 (blue)" in a.output
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    g = runner.invoke(app, ["sample", str(run), "--class", "blue", "-n", "3", "--steps", "8",
                            "--guidance", "0", "-o", str(tmp_path / "g0.npy")])
    assert g.exit_code == 0, g.output
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "g0.npy"))  # w = 0: unguided
    g = runner.invoke(app, ["sample", str(run), "--class", "blue", "-n", "3", "--steps", "8",
                            "--guidance", "2", "--guidance-interval", "0.5,inf",
                            "-o", str(tmp_path / "g2.npy")])
    assert g.exit_code == 0, g.output
    assert "classifier-free, w=2" in g.output and "network calls/image" in g.output
    assert not np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "g2.npy"))


def test_every_run_keeps_an_early_snapshot_to_guide_with(trained, runner, tmp_path):
    _, run, output = trained
    guide = run / "guide.safetensors"
    assert read_info(guide)["step"] == 20  # --guide-at 0.125 of 160 steps
    assert "step 20: kept" in output
    res = runner.invoke(app, ["sample", str(run), "--guide", str(run), "--guidance", "1", "-n", "2",
                              "--steps", "6", "-o", str(tmp_path / "g.npy")])
    assert res.exit_code == 0, res.output
    assert f"autoguidance by {guide}, w=1" in res.output
    res = runner.invoke(app, ["sample", str(run), "--guide", str(tmp_path), "--guidance", "1", "-n", "2",
                              "-o", str(tmp_path / "h.npy")])
    assert res.exit_code == 1 and "a folder without guide.safetensors" in res.output, res.output


def test_an_unconditional_run_folders_model_is_autoguided_by_the_runs_snapshot_by_default(trained, runner,
                                                                                          tmp_path):
    """`dtools sample RUN` of an unconditional model guides with RUN/guide.safetensors at w=1 unless told
    otherwise; the same model outside its run folder, or with --guidance 0, samples unguided; a
    conditional model samples unguided unless asked (guidance by the snapshot raised its FID)."""
    data, cond_run, _ = trained
    run = tmp_path / "uncond"
    res = runner.invoke(app, ["train", str(data), "-o", str(run), "--cond", "none", *TRAIN])
    assert res.exit_code == 0, res.output
    guide = run / "guide.safetensors"
    assert guide.is_file()

    def draw(name, *args, model=run):
        res = runner.invoke(app, ["sample", str(model), "-n", "3", "--steps", "6", *args,
                                  "-o", str(tmp_path / f"{name}.npy")])
        assert res.exit_code == 0, res.output
        return np.load(tmp_path / f"{name}.npy"), res.output

    default, output = draw("default")
    assert f"autoguidance by {guide}, w=1" in output and "12 network calls/image" in output, output
    explicit, _ = draw("explicit", "--guide", str(guide), "--guidance", "1")
    weight_only, output = draw("weight-only", "--guide", str(run))
    assert f"autoguidance by {guide}, w=1" in output
    _, output = draw("w2", "--guidance", "2")
    assert f"autoguidance by {guide}, w=2" in output
    off, output = draw("off", "--guidance", "0")
    assert "autoguidance" not in output and "6 network calls/image" in output
    solo = tmp_path / "solo.safetensors"
    shutil.copyfile(run / "model.safetensors", solo)
    alone, output = draw("alone", model=solo)
    assert "autoguidance" not in output
    assert np.array_equal(default, explicit) and np.array_equal(default, weight_only)
    assert np.array_equal(off, alone) and not np.array_equal(default, off)
    _, output = draw("conditional", "--class", "green", model=cond_run)
    assert "autoguidance" not in output and "classifier-free" not in output
    assert "6 network calls/image" in output


def test_autoguidance_by_a_weaker_checkpoint(trained, runner, tmp_path):
    _, run, _ = trained
    weak = tmp_path / "weak"
    shutil.copytree(run, weak)
    res = runner.invoke(app, ["sample", str(run), "--guide", str(weak / "model.safetensors"),
                              "--weights", "raw", "--guidance", "1", "-n", "2", "--steps", "6",
                              "-o", str(tmp_path / "auto.npy")])
    assert res.exit_code == 0, res.output
    assert "autoguidance by" in res.output


@pytest.mark.parametrize("args, message", [
    (["--class", "purple"], "no class 'purple' in this model; its classes are 0=red, 1=green, 2=blue"),
    (["--class", "7"], "no class '7'"),
    (["--class", "red", "--per-class", "2"], "not both"),
    (["--guidance", "-1"], "--guidance"),
    (["--guidance-interval", "1,2"], "needs --guidance W > 0"),
    (["--guidance", "1", "--guidance-interval", "3,1"], "0 <= LO < HI"),
    (["--guidance", "1", "--class", "none"], "null class itself"),
])
def test_bad_conditioning_options_are_one_line(trained, runner, tmp_path, args, message):
    _, run, _ = trained
    res = runner.invoke(app, ["sample", str(run), "-n", "2", *args, "-o", str(tmp_path / "x.npy")])
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "x.npy").exists()


def test_unconditional_models_refuse_classes_and_guidance_without_a_guide(tmp_path, runner):
    from tests.cli.test_sample import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "u.safetensors")
    for args, message in ((["--class", "1"], "unconditional model"),
                          (["--per-class", "2"], "unconditional model"),
                          (["--guidance", "2"], "no null class")):
        res = runner.invoke(app, ["sample", str(ckpt), "-n", "2", *args, "-o", str(tmp_path / "x.npy")])
        assert res.exit_code == 1 and message in res.output, res.output


def test_a_guide_of_another_schedule_or_size_is_refused(tmp_path, runner):
    from dtools.schedules import make_schedule
    from dtools.unet import UNetConfig
    from tests.cli.test_sample import CFG, T, make_checkpoint

    main = make_checkpoint(tmp_path / "m.safetensors")
    other_schedule = make_checkpoint(tmp_path / "s.safetensors", betas=make_schedule("linear", T))
    bigger = UNetConfig(**{**CFG.__dict__, "image_size": 16, "attention_resolutions": (8,)})
    other_size = make_checkpoint(tmp_path / "z.safetensors", cfg=bigger)
    for guide, message in ((other_schedule, "another noise schedule"), (other_size, "makes 16x16x3 images"),
                           (main, "the model itself")):
        res = runner.invoke(app, ["sample", str(main), "-n", "2", "--guidance", "1", "--guide", str(guide),
                                  "-o", str(tmp_path / "x.npy")])
        assert res.exit_code == 1 and message in res.output, res.output


def test_cond_none_trains_unconditionally_and_cond_class_needs_labels(trained, runner, tmp_path):
    data, _, _ = trained
    res = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "u"), *TRAIN, "--max-steps", "2",
                              "--cond", "none"])
    assert res.exit_code == 0, res.output
    assert "unconditional (--cond none" in res.output
    assert "condition" not in read_info(tmp_path / "u")
    plain = tmp_path / "plain"
    shutil.copytree(data, plain)
    (plain / LABELS_FILE).unlink()
    res = runner.invoke(app, ["train", str(plain), "-o", str(tmp_path / "c"), *TRAIN, "--cond", "class"])
    assert res.exit_code == 2 and "has no labels" in res.output, res.output


def test_resume_needs_the_same_labels(trained, runner, tmp_path):
    data, run, _ = trained
    moved = tmp_path / "data"
    shutil.copytree(data, moved)
    d = json.loads((moved / LABELS_FILE).read_text())
    d["labels"][0][1] = 1  # one image relabelled
    (moved / LABELS_FILE).write_text(json.dumps(d))
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    res = runner.invoke(app, ["train", "--resume", "-o", str(copy), str(moved), "--max-steps", "170"])
    assert res.exit_code == 1 and "not the images the run" in res.output, res.output


def test_export_and_import_keep_the_classes(trained, runner, tmp_path):
    from diffusers import UNet2DModel

    _, run, _ = trained
    pipe = tmp_path / "pipe"
    res = runner.invoke(app, ["export", str(run), "-o", str(pipe)])
    assert res.exit_code == 0, res.output
    unet = json.loads((pipe / "unet/config.json").read_text())
    assert unet["num_class_embeds"] == 4 and unet["dtools_null_class"] == 3
    assert UNet2DModel.from_pretrained(pipe / "unet").class_embedding.weight.shape[0] == 4
    back = tmp_path / "back.safetensors"
    res = runner.invoke(app, ["import", str(pipe), "-o", str(back)])
    assert res.exit_code == 0, res.output
    assert read_info(back)["condition"] == {"kind": "class", "classes": ["red", "green", "blue"]}
    a = runner.invoke(app, ["sample", str(run), "--class", "green", "-n", "2", "--steps", "5", "--precision",
                            "fp32", "-o", str(tmp_path / "a.npy")])
    b = runner.invoke(app, ["sample", str(back), "--class", "green", "-n", "2", "--steps", "5", "--precision",
                            "fp32", "-o", str(tmp_path / "b.npy")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    # a folder whose embedded header went missing still imports, its classes named by index
    edited = tmp_path / "edited"
    shutil.copytree(pipe, edited)
    from safetensors.torch import load_file, save_file
    weights = edited / "unet/diffusion_pytorch_model.safetensors"
    save_file(load_file(weights), weights)  # without dtools' metadata
    res = runner.invoke(app, ["import", str(edited), "-o", str(tmp_path / "e.safetensors")])
    assert res.exit_code == 0, res.output
    assert read_info(tmp_path / "e.safetensors")["condition"]["classes"] == ["0", "1", "2"]


def test_a_fine_tune_keeps_the_classes_and_needs_them_in_the_data(trained, runner, tmp_path):
    data, run, _ = trained
    res = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "ft"), "--init-from", str(run),
                              "--max-steps", "2", "--sample-every", "0", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert read_info(tmp_path / "ft")["condition"]["classes"] == ["red", "green", "blue"]
    plain = tmp_path / "plain"
    shutil.copytree(data, plain)
    (plain / LABELS_FILE).unlink()
    res = runner.invoke(app, ["train", str(plain), "-o", str(tmp_path / "ft2"), "--init-from", str(run),
                              "--max-steps", "2"])
    assert res.exit_code == 1 and "has no labels, but" in res.output and "is conditioned on red" in res.output
    res = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "ft3"), "--init-from", str(run),
                              "--max-steps", "2", "--cond", "none"])
    assert res.exit_code == 1 and "is class-conditional; --init-from keeps its network" in res.output
