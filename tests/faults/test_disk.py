"""A full disk while `train` writes a checkpoint: the error is injected where the bytes go (safetensors'
own write error, as it reports ENOSPC; or an OSError from the file write), so the test needs no full
disk. The run ends in one line, the last checkpoint stays whole, no temp file is left, and once there
is space again --resume continues to the weights an uninterrupted run ends with."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import dtools.fileio as fileio
import dtools.tensorfile as tensorfile
from dtools.cli import app
from dtools.tensorfile import read_header

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--beta", "cosine", "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
        "--attention", "none", "--batch-size", "4", "--sample-every", "0", "--precision", "fp32",
        "--device", "cpu", "--save-every", "2", "--log-every", "1", "--seed", "1", "--guide-at", "0"]


def train(runner, data: Path, run: Path, steps: int, *extra: str):
    return runner.invoke(app, ["train", str(data), "-o", str(run), *TINY, "--max-steps", str(steps), *extra])


def safetensors_full(real):
    """save_file that fails like safetensors on a full disk when it writes the training state."""

    def save_file(tensors, filename, metadata=None):
        if "train-state" in str(filename):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
        return real(tensors, filename, metadata=metadata)

    return save_file


def python_write_full(real):
    """fsync that fails with ENOSPC for the model checkpoint's temp file (a file system that reports a
    full disk late, at fsync); other files are written as usual."""

    def fsync(fd):
        if ".model." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    return fsync


@pytest.mark.parametrize("inject", ["safetensors", "fsync"])
def test_full_disk_keeps_the_last_checkpoint_and_resumes(tmp_path, runner, png_maker, monkeypatch, inject):
    data = tmp_path / "data"
    png_maker(data, n=6, size=8)
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert train(runner, data, straight, 6).exit_code == 0
    assert train(runner, data, run, 2).exit_code == 0
    state = (run / "train-state.safetensors").read_bytes()

    with monkeypatch.context() as m:
        if inject == "safetensors":
            m.setattr(tensorfile, "save_file", safetensors_full(tensorfile.save_file))
        else:
            m.setattr(fileio.os, "fsync", python_write_full(fileio.os.fsync))
        full = train(runner, data, run, 6, "--resume")
    assert full.exit_code == 1
    lines = full.stderr.strip().splitlines()
    assert lines[-1] == (f"Error: no space left on the disk ({run}) for the checkpoint of step 4; stopped, "
                         f"the checkpoint of step 2 in {run} is intact; free some space, then run the "
                         "same command with --resume to continue from it"), full.stderr
    assert "Traceback" not in full.stderr
    assert (run / "train-state.safetensors").read_bytes() == state
    assert read_header(run / "train-state.safetensors", None)["step"] == 2
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temp file, no lock

    resumed = train(runner, data, run, 6, "--resume")  # space again
    assert resumed.exit_code == 0, resumed.stderr
    want, got = load_file(straight / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(want[k], got[k]) for k in want)
