"""Training on two CPU processes (gloo, torchrun): what docs/distributed.md promises, checked.

One torchrun launch of tests/train/ddp_worker.py trains a tiny U-Net, VAE and DCGAN on 2 processes; the
same U-Net run in this process is the reference. Each process uses one thread (the box has 2 cores).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dtools import train as training
from dtools.checkpoint import RUN_GUIDE_FILE, read_model
from dtools.tensorfile import read_header
from dtools.train import distributed

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.serial]  # two-process runs, a free port

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
        "num_heads": 2, "lr": 3e-3, "sample_every": 0, "log_every": 1, "dropout": 0.0,
        "precision": "fp32"}  # bf16 (auto on AMX CPUs) rounds a batch of 2 unlike one of 4, ~1e-4 of the loss
# a global batch of 8 in 2 micro-batches: each process trains on 4 images, 2 per micro-batch
UNET = {**TINY, "batch_size": 8, "grad_accum": 2, "save_every": 3, "max_steps": 6}
SMALL = {"base_channels": 8, "latent_dim": 4, "batch_size": 8, "save_every": 3, "log_every": 1,
         "max_steps": 3}


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DTOOLS_DIST_TIMEOUT": "60",
            **extra}


def torchrun(*args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "--monitor-interval=0.2", *args]
    return subprocess.run(cmd, env=env(**extra), capture_output=True, text=True, timeout=timeout)


def spec(path: Path, runs: list[dict]) -> str:
    path.write_text(json.dumps(runs))
    return str(path)


@pytest.fixture(scope="module")
def ddp(data8, tmp_path_factory):
    """The runs on 2 processes (folders unet, vae, dcgan) and the U-Net in one process (single)."""
    root = tmp_path_factory.mktemp("ddp")
    labelled = labelled_copy(data8, root / "labelled")
    runs = [
        {"data": str(data8), "out": str(root / "unet"), "options": UNET},
        {"data": str(data8), "out": str(root / "vae"), "options": {**SMALL, "model_type": "vae",
                                                                   "sample_every": 0}},
        {"data": str(data8), "out": str(root / "dcgan"), "options": {**SMALL, "model_type": "dcgan",
                                                                     "sample_every": 3, "sample_count": 4}},
        # a time budget that each process finds used up at its own moment
        {"data": str(data8), "out": str(root / "budget"), "options": {**UNET, "max_steps": 500,
                                                                      "max_minutes": 0.002}},
        # class-conditional: each process's slice of the labels and of the label-dropout draws
        {"data": str(labelled), "out": str(root / "cond"), "options": {**UNET, "cond_drop": 0.5}},
        # sized in time, rank 1's clock 0.4 s ahead: lr warm-up, guide, snapshots and end by one clock
        {"data": str(data8), "out": str(root / "timed"), "skew": [1, 0.4],
         "options": {**TINY, "batch_size": 8, "max_minutes": 0.02, "warmup": 0.5, "guide_at": 0.5,
                     "posthoc_ema": 4, "save_every": 1000}},
    ]
    done = torchrun(str(Path(ddp_worker.__file__)), spec(root / "spec.json", runs))
    assert done.returncode == 0, done.stderr[-3000:]
    single = ddp_worker.train({"data": str(data8), "out": str(root / "single"), "options": UNET})
    ddp_worker.train({"data": str(labelled), "out": str(root / "cond-single"),
                      "options": {**UNET, "cond_drop": 0.5}})
    return root, single


def labelled_copy(data: Path, out: Path) -> Path:
    """`data`'s images with two classes (i % 2) in a dataset.json."""
    import shutil

    from dtools.labels import write_labels

    shutil.copytree(data, out)
    names = sorted(p.name for p in out.glob("*.png"))
    write_labels(out, names, [i % 2 for i in range(len(names))], ["even", "odd"])
    return out


def ranks(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    return load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))


def apart(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over all tensors of b. Not the largest difference: Adam moves a weight whose
    gradient is about 0 by up to lr either way, so rounding flips a few weights by ~lr (measured: 19 of
    45k weights by > 1e-4 after 6 steps, 2e-4 in all)."""
    d = torch.cat([(a[k] - v).flatten() for k, v in b.items()])
    return float(d.norm() / torch.cat([v.flatten() for v in b.values()]).norm())


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / training.METRICS_FILE).read_text().splitlines()]


@pytest.mark.parametrize("model", ["unet", "vae", "dcgan"])
def test_all_processes_hold_the_same_weights_ema_and_buffers(ddp, model):
    a, b = ranks(ddp[0] / model)
    nets = [k for k in a if not k.startswith("batch.")]
    assert set(a) == set(b) and any(k.startswith("EMA") for k in nets)
    if model != "unet":  # BatchNorm: running statistics, of the EMA networks too
        assert any(k.endswith("running_mean") and k.startswith("EMA") for k in nets)
    assert [k for k in nets if not torch.equal(a[k], b[k])] == []
    assert not torch.equal(a["batch.1"], b["batch.1"])  # yet they trained on different images


@pytest.mark.parametrize("model", ["unet", "vae", "dcgan"])
def test_shards_are_disjoint_and_make_up_the_global_batch(ddp, data8, model):
    a, b = ranks(ddp[0] / model)
    steps = sorted(int(k.split(".")[1]) for k in a if k.startswith("batch."))
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 3
    for s in steps:
        x, y = a[f"batch.{s}"], b[f"batch.{s}"]
        assert x.shape[0] == y.shape[0] == 4  # half the global batch of 8 each
        rows = {tuple(r.flatten().tolist()) for r in x}
        assert not rows & {tuple(r.flatten().tolist()) for r in y}  # 24 distinct emoji: disjoint
    if model == "unet":  # together, the batch one process trains on (the same images, same flips)
        single = ddp[1].batches
        assert len(single) == len(steps)
        for s in steps:
            assert torch.equal(torch.cat([a[f"batch.{s}"], b[f"batch.{s}"]]), single[s - 1])


def test_the_processes_stop_at_the_same_step(ddp):
    a, b = ranks(ddp[0] / "budget")
    steps = [k for k in a if k.startswith("batch.")]
    assert 0 < len(steps) < 500 and set(steps) == {k for k in b if k.startswith("batch.")}
    info = read_header(ddp[0] / "budget" / training.STATE_FILE, "dtools.train-state")
    assert info["step"] == len(steps) == metrics(ddp[0] / "budget")[-1]["step"]


def test_a_run_sized_in_time_goes_by_one_clock(ddp):
    """Each process by its own clock would warm the lr up differently and keep the guide or a snapshot
    at a different step, where the other calls another collective: a hang until the timeout."""
    run = ddp[0] / "timed"
    a, b = ranks(run)
    steps = {k for k in a if k.startswith("batch.")}
    assert len(steps) >= 2 and steps == {k for k in b if k.startswith("batch.")}
    nets = [k for k in a if not k.startswith("batch.")]
    assert [k for k in nets if not torch.equal(a[k], b[k])] == []  # the same lr at every step
    assert int(a["guide_step"]) == int(b["guide_step"]) and (run / RUN_GUIDE_FILE).is_file()
    assert list((run / "posthoc").glob("*.safetensors"))
    info = read_header(run / training.STATE_FILE, "dtools.train-state")
    assert info["step"] == len(steps) and info["elapsed"] >= 0.02 * 60


def test_the_loss_trajectory_is_that_of_one_process(ddp):
    root, single = ddp
    two, one = metrics(root / "unet"), metrics(root / "single")
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 7))
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-4), key
    a, _ = ranks(root / "unet")
    assert apart({k[len("weights."):]: v for k, v in a.items()}, single.method.model.state_dict()) < 1e-3


def test_a_class_conditional_run_follows_the_trajectory_of_one_process(ddp):
    root, _ = ddp
    two, one = metrics(root / "cond"), metrics(root / "cond-single")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    a, _ = ranks(root / "cond")
    assert "weights.class_embed.weight" in a
    (w1, h1) = read_model(root / "cond-single" / training.MODEL_FILE)
    assert h1["condition"] == {"kind": "class", "classes": ["even", "odd"]}
    assert apart({k[len("weights."):]: v for k, v in a.items()}, w1["raw"]) < 1e-3


def test_the_comparison_tells_a_different_batch_apart(ddp, data8, tmp_path):
    # the test above can fail: one process on each process's own batch of 4 has another trajectory
    one = ddp_worker.train({"data": str(data8), "out": str(tmp_path / "b4"),
                            "options": {**UNET, "batch_size": 4}})
    two = metrics(ddp[0] / "unet")
    assert [r["loss"] for r in one.metrics] != pytest.approx([r["loss"] for r in two], rel=1e-4)
    a, _ = ranks(ddp[0] / "unet")
    assert apart({k[len("weights."):]: v for k, v in a.items()}, one.method.model.state_dict()) > 1e-2


def test_the_checkpoint_is_that_of_one_process(ddp):
    root, _ = ddp
    (w2, h2), (w1, h1) = read_model(root / "unet" / training.MODEL_FILE), read_model(root / "single" /
                                                                                   training.MODEL_FILE)
    assert set(h2) == set(h1) and h2["step"] == h1["step"] == 6 and h2["model"] == h1["model"]
    assert {k: {n: t.shape for n, t in w.items()} for k, w in w2.items()} == \
        {k: {n: t.shape for n, t in w.items()} for k, w in w1.items()}
    s2, s1 = load_file(str(root / "unet" / training.STATE_FILE)), load_file(str(root / "single" /
                                                                                training.STATE_FILE))
    assert set(s2) == set(s1)
    # the state is the same whatever the number of processes: RNG and data position in global terms
    assert all(torch.equal(s2[k], s1[k]) for k in s1 if k.startswith(("rng.", "data.")))
    i2 = read_header(root / "unet" / training.STATE_FILE, "dtools.train-state")
    i1 = read_header(root / "single" / training.STATE_FILE, "dtools.train-state")
    assert (i2["data"], i2["ema_updates"]) == (i1["data"], i1["ema_updates"])
    assert not list((root / "unet").glob("rank*.png")) and (root / "dcgan" / "samples").is_dir()


def test_a_distributed_run_resumes_in_one_process(ddp, data8, config, fit):
    root, _ = ddp
    opts = {k: v for k, v in UNET.items() if k not in TINY or k in ("lr", "dropout", "sample_every",
                                                                     "log_every", "precision")}
    runs = {}
    for name in ("unet", "single"):  # 6 steps on 2 processes / on 1, then 3 more on 1
        result = fit(config(data8, root / name, **{**opts, "max_steps": 9}), resume=True)
        assert result.step == 9
        runs[name] = load_file(str(root / name / training.MODEL_FILE))
    assert [r["step"] for r in metrics(root / "unet")] == list(range(1, 10))
    late = [[r["loss"] for r in metrics(root / n)][6:] for n in ("unet", "single")]
    assert late[0] == pytest.approx(late[1], rel=1e-3)
    assert set(runs["unet"]) == set(runs["single"]) and apart(runs["unet"], runs["single"]) < 2e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_broken_process_ends_the_run_with_one_line_each_not_a_hang(data8, tmp_path):
    """Rank 1 raises at step 2; rank 0, inside a collective, ends too, with no launcher to kill it."""
    run = {"data": str(data8), "out": str(tmp_path / "run"), "options": UNET, "fail": [1, 2]}
    cmd = [sys.executable, str(Path(ddp_worker.__file__)), spec(tmp_path / "spec.json", [run])]
    start, port = time.monotonic(), str(free_port())
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env(
        RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
        for r in range(2)]
    stderr = [p.communicate(timeout=90)[1] for p in procs]
    assert [p.returncode for p in procs] == [1, 1] and time.monotonic() - start < 60
    errors = [line for text in stderr for line in text.splitlines() if line.startswith("Error: ")]
    assert "Error: rank 1: rank 1 broke on purpose at step 2" in errors
    assert len(errors) <= 2 and all("rank 0: another training process stopped" in e or "rank 1" in e
                                    for e in errors), errors
    assert not (tmp_path / "run" / training.MODEL_FILE).exists()  # nothing half-written


def test_batch_must_split_over_the_processes():
    g = distributed.Group(0, 2)
    g.check(8, 2)
    with pytest.raises(distributed.OptionError, match="does not split over 2 processes"):
        g.check(7, 1)
    with pytest.raises(distributed.OptionError, match="micro-batches"):
        g.check(8, 3)
    with pytest.raises(distributed.OptionError, match="stdin"):
        distributed.check(2, beta="-")
    distributed.check(1, beta="-")


def test_without_nproc():
    argv = ["train", "d", "--nproc", "2", "-o", "r", "--nproc=3", "--batch", "8"]
    assert distributed.without_nproc(argv) == ["train", "d", "-o", "r", "--batch", "8"]


def test_dtools_train_nproc_launches_torchrun_and_rank_0_reports(data8, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dtools", "train", str(data8), "--beta", "cosine", "-o", str(run),
           "--nproc", "2", "--batch", "8", "--max-steps", "2", "--save-every", "2", "--sample-every", "0",
           "--log-every", "1", "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
           "--attention", "none"]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert [line for line in lines if line.startswith("training ")][0].count("2 processes (gloo)") == 1
    assert len([line for line in lines if line.startswith("done: ")]) == 1  # rank 0 alone
    assert [r["step"] for r in metrics(run)] == [1, 2]
    weights, info = read_model(run / training.MODEL_FILE)
    assert info["step"] == 2 and set(weights) == {"ema", "raw"}


class Failure:
    def __init__(self, exitcode: int, message: str | None = None, kind: str | None = None):
        self.exitcode = exitcode
        extra = {"timestamp": "0", "py_callstack": ""} | ({"dtools": kind} if kind else {})
        self.error_file_data = {"message": {"message": message, "extraInfo": extra}} if message else {}


def test_the_launcher_names_the_root_cause_not_its_consequences():
    cause = distributed._root_cause
    lost = Failure(1, "rank 0: another training process stopped or did not answer (...)", "peer")
    own = Failure(1, "rank 1: CUDA out of memory", "rank")
    assert cause({0: lost, 1: own}) == ("rank 1: CUDA out of memory", 1)
    shared = Failure(1, "RUN already exists", "shared")
    assert cause({0: Failure(1, "RUN already exists", "error"), 1: shared}) == ("RUN already exists", 1)
    assert cause({0: Failure(-15), 1: own})[0] == "rank 1: CUDA out of memory"
    assert cause({0: Failure(-9)}) == ("rank 0 was stopped by signal 9", 1)


def test_which_process_prints_its_error(monkeypatch, tmp_path):
    monkeypatch.delenv(distributed.LAUNCHED_ENV, raising=False)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not distributed.speaks(distributed.DtoolsError("bad data"))  # rank 0 says it
    assert json.loads((tmp_path / "error.json").read_text())["message"]["message"] == "bad data"
    assert distributed.speaks(distributed.RankFailure("rank 1: broke"))  # its own failure
    monkeypatch.setenv("RANK", "0")
    assert distributed.speaks(distributed.DtoolsError("bad data"))
    assert not distributed.speaks(distributed.Shared("bad data"))
    monkeypatch.setenv(distributed.LAUNCHED_ENV, "1")  # dtools train --nproc: the launcher says it
    assert not distributed.speaks(distributed.RankFailure("rank 0: broke"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.speaks(distributed.DtoolsError("bad data"))
