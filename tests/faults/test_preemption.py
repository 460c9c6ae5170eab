"""A preempted run: `dtools train ... --resume` on one fixed command line, killed with SIGKILL at random
moments (the first time before any checkpoint), run again until it finishes, ends with the very weights
of an uninterrupted run (fp32, CPU, one thread)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DTOOLS = Path(sys.executable).parent / "dtools"
pytestmark = pytest.mark.usefixtures("one_thread")  # the in-process runs
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TOY = ["--beta", "cosine", "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
       "--attention", "none", "--batch-size", "8", "--max-steps", "48", "--save-every", "6",
       "--sample-every", "0", "--log-every", "3", "--precision", "fp32", "--device", "cpu", "--seed", "3"]


def command(data: Path, run: Path, *extra: str) -> list[str]:
    return [str(DTOOLS), "train", str(data), "-o", str(run), *TOY, *extra]


def killed_run(cmd: list[str], after_checkpoint: bool, delay: float) -> bool:
    """Start `cmd`; SIGKILL it `delay` s after start, or after its next "saved" line. True if killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    if after_checkpoint:
        for line in proc.stderr:
            if "saved" in line:
                break
    time.sleep(delay)
    alive = proc.poll() is None
    proc.kill()
    proc.wait(timeout=30)
    proc.stderr.close()
    return alive


def test_killed_and_resumed_run_ends_with_the_straight_runs_weights(tmp_path, png_maker):
    data = tmp_path / "data"
    png_maker(data, n=16, size=8)
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    subprocess.run(command(data, straight), check=True, env=ENV, capture_output=True, timeout=120)

    rng = random.Random(26)
    cmd = command(data, preempted, "--resume")  # the requeued job's one command line, from its first start
    kills = [killed_run(cmd, after_checkpoint=False, delay=0.3)]  # still importing: no checkpoint yet
    kills += [killed_run(cmd, after_checkpoint=True, delay=rng.uniform(0.0, 0.15)) for _ in range(3)]
    assert kills[0] and sum(kills) >= 3, kills
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr

    want, got = load_file(straight / "model.safetensors"), load_file(preempted / "model.safetensors")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want), "the preempted run's weights differ"
    leftovers = [p.name for p in preempted.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers  # no temp file of a killed writer, no lock file


def test_resume_without_a_checkpoint_starts_the_run(tmp_path, png_maker, runner):
    from dtools.cli import app

    data = tmp_path / "data"
    png_maker(data, n=8, size=8)
    run = tmp_path / "run"
    args = ["train", str(data), "-o", str(run), *TOY, "--resume"]
    result = runner.invoke(app, [*args, "--max-steps", "2"])
    assert result.exit_code == 0, result.stderr
    assert f"{run}: no checkpoint to resume yet (--resume); starting the run at step 0" in result.stderr
    assert (run / "train-state.safetensors").is_file()
    # the same values again (the whole command line: network, seed, batch) are no change
    again = runner.invoke(app, [*args, "--max-steps", "3"])
    assert again.exit_code == 0, again.stderr
    assert "resuming" in again.stderr.lower() or "steps 2->3" in again.stderr, again.stderr
    # a real change is refused in one line
    changed = runner.invoke(app, [*args, "--max-steps", "4", "--base-channels", "16"])
    assert changed.exit_code == 1
    assert changed.stderr.strip().splitlines() == [
        "Error: --base-channels cannot change when resuming a run (it is 8, given 16); drop it, or start a "
        "new run (another -o, or --force)"]
    # no DATA and nothing to resume: one line, and no folder left behind
    empty = runner.invoke(app, ["train", "-o", str(tmp_path / "none"), "--resume"])
    assert empty.exit_code == 1 and empty.stderr.startswith("Error: ") and "no checkpoint" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()
