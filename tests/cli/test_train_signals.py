"""Ctrl-C during a slow training step, on a real process: the first says at once what will happen,
the second aborts at once with exit 130, and the run folder is never left half-written or stuck."""

from __future__ import annotations

import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from dtools.checkpoint import read_info
from dtools.cli import app
from dtools.tensorfile import read_header
from dtools.train.state import load_state

DTOOLS = pathlib.Path(sys.executable).parent / "dtools"
# A tiny U-Net, but batches so large that one step takes a few seconds on a CPU thread: a "slow step".
SLOW = ["--beta", "cosine", "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
        "--attention", "4", "--heads", "2", "--batch", "4096", "--sample-every", "0", "--log-every", "1"]

pytestmark = [pytest.mark.usefixtures("one_thread"),  # for the runs in this process
              pytest.mark.serial]  # timed signals: run alone (Makefile)


class Lines:
    """A process's stderr, line by line, read by a thread (so a test can wait for a line with a timeout)."""

    def __init__(self, proc: subprocess.Popen):
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc.stderr,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.q.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r}; saw {self.seen}")


def start(data: pathlib.Path, run: pathlib.Path, *args: str) -> tuple[subprocess.Popen, Lines]:
    proc = subprocess.Popen([str(DTOOLS), "train", str(data), "-o", str(run), *SLOW, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, Lines(proc)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
    sys.path.insert(0, str(pathlib.Path(__file__).parent.parent))
    from conftest import make_tiny_pngs

    folder = tmp_path_factory.mktemp("signals") / "data"
    make_tiny_pngs(folder, 20)
    return folder


def test_ctrl_c_twice_before_the_first_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    proc, lines = start(data, run, "--max-steps", "1000", "--save-every", "1000")
    try:
        lines.wait_for("training ")  # the first step (the slowest: warm-up included) starts now
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        said = lines.wait_for("Ctrl-C", timeout=10)
        assert said == ("Ctrl-C: stopping after step 1 and saving a checkpoint; Ctrl-C again aborts at once "
                        "(nothing has been saved yet)")
        assert not (run / "train-state.safetensors").exists()  # said while the step still ran
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert lines.wait_for("aborted") == ("aborted during step 1, before the first checkpoint: nothing was "
                                         "saved; the same command starts the run over")
    assert not (run / "train-state.safetensors").exists()  # it did not wait for the step to end
    assert took < 3, took
    # config.json, and the lock file of the aborted process (no longer held: it died)
    assert sorted(p.name for p in run.iterdir() if p.name != ".dtools.lock") == ["config.json"]

    # --resume and a new run no longer send the user to each other: the same command starts over
    resumed = CliRunner().invoke(app, ["train", "--resume", "-o", str(run)])
    assert resumed.exit_code == 1
    assert resumed.stderr.strip() == (f"Error: {run}: no checkpoint to resume yet (--resume), and no DATA "
                                      "to start the run from; give the DATA folder too")
    again = CliRunner().invoke(app, ["train", str(data), "-o", str(run), *SLOW, "--batch", "8",
                                     "--max-steps", "2"])
    assert again.exit_code == 0, again.stderr
    assert f"{run}: its earlier run stopped before its first checkpoint; starting it over" in again.stderr
    assert read_info(run / "model.safetensors")["step"] == 2


def test_second_ctrl_c_keeps_the_last_checkpoint_whole(data, tmp_path):
    run = tmp_path / "run"
    proc, lines = start(data, run, "--max-steps", "1000", "--save-every", "1")
    state = run / "train-state.safetensors"
    try:
        deadline = time.monotonic() + 120
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        said = lines.wait_for("Ctrl-C", timeout=10)
        assert "and saving a checkpoint" in said
        assert "Ctrl-C again aborts at once (the checkpoint of step" in said
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
    line = lines.wait_for("aborted")
    assert "is intact; continue with: dtools train --resume -o" in line
    step = read_header(state, "dtools.train-state")["step"]
    assert f"the checkpoint of step {step} in {run} is intact" in line
    load_state(state)  # whole and readable
    assert read_info(run / "model.safetensors")["step"] == step
    # no half-written temp file (the aborted process's lock file stays, unheld: the kernel dropped the lock)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".dtools.lock"]
