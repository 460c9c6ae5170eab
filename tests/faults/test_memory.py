"""Memory: a run that cannot fit is refused before it starts, in one line with the estimate and the
memory available; `--dry-run` prints the estimate; the estimate is a floor of the peak a real step
reaches (measured here at a small size, in a process of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dtools.cli import app
from dtools.train import memory

pytestmark = pytest.mark.usefixtures("one_thread")
NET = ["--beta", "cosine", "--base-channels", "16", "--channel-mult", "1,2", "--res-blocks", "1",
       "--attention", "8", "--heads", "2", "--sample-every", "0", "--precision", "fp32", "--device", "cpu"]

# In a fresh process: the estimate, then the resident-memory peak of real training steps at that size.
MEASURE = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from dtools.train.main import configure
    from dtools.train import memory
    from dtools.runtime import resolve
    from dtools.train.data import Batch
    from dtools.models import lookup_model

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    options = dict(base_channels=16, channel_mult="1,2", num_res_blocks=1, attention_resolutions="16",
                   num_heads=2, batch_size=int(sys.argv[3]), sample_every=0, precision="fp32", device="cpu")
    cfg = configure(sys.argv[2], sys.argv[1], "cosine", options)
    rt = resolve("cpu", "fp32", False)
    est = memory.estimate(cfg, rt)
    x = torch.rand(cfg.batch_size, cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1
    before = status("VmRSS:")
    method = lookup_model(cfg.model_type).method_class()(cfg, rt, lambda: Batch(x))
    for _ in range(2):
        method.train_step()
    peak = status("VmHWM:")
    print(json.dumps({"states": est.states, "activations": est.activations, "peak": peak - before}))
""")


def test_estimate_is_a_floor_of_the_measured_peak(tmp_path, png_maker):
    data = tmp_path / "data"
    png_maker(data, n=4, size=32)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(data), str(tmp_path / "run"), "64"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)
    need = m["states"] + m["activations"]
    assert m["activations"] > 10 * m["states"]  # a size where the batch's activations dominate
    # a floor: the step's peak holds these and the backward pass's own temporaries besides ...
    assert need <= m["peak"], m
    # ... but not a loose one
    assert need >= 0.4 * m["peak"], m


def test_a_run_that_cannot_fit_is_refused_up_front(tmp_path, runner, png_maker, monkeypatch):
    data = tmp_path / "data"
    png_maker(data, n=4, size=16)
    run = tmp_path / "run"
    monkeypatch.setattr(memory, "available", lambda device: 2**20)  # 1 MiB free
    result = runner.invoke(app, ["train", str(data), "-o", str(run), *NET, "--batch-size", "64"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: training needs about ") and "(batch 64 at 16 px" in lines[0]
    assert "; 0.0 GiB available; lower --batch-size" in lines[0]
    assert not run.exists()  # refused before anything was written


def test_dry_run_prints_the_estimate(tmp_path, runner, png_maker):
    data = tmp_path / "data"
    png_maker(data, n=4, size=16)
    result = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "run"), *NET, "--batch-size", "8",
                                 "--dry-run"])
    assert result.exit_code == 0, result.stderr
    mem = json.loads(result.stdout)["memory"]
    assert mem["micro_batch"] == 8 and mem["gib"] > 0 and mem["activations_gib"] > 0
    assert "memory: about" in result.stderr
