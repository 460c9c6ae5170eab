"""Output cut off by SIGKILL: `sample -o DIR` leaves only whole PNGs, and the same command continues
where it stopped, to the very bytes of an uninterrupted run (each image has its own seed); other
options are refused without --force. Statistics (`fid --save-stats`) are written whole or not at all."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dtools.cli import app
from dtools.images import list_image_files
from dtools.sample import RECORD_FILE

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.serial]  # kills mid-write: run alone
DTOOLS = Path(sys.executable).parent / "dtools"
TINY = ["--beta", "cosine", "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
        "--attention", "none", "--batch-size", "4", "--sample-every", "0", "--precision", "fp32",
        "--device", "cpu", "--max-steps", "1"]
N = 24


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from tests.conftest import make_tiny_pngs

    root = tmp_path_factory.mktemp("interrupted")
    make_tiny_pngs(root / "data", n=4, size=8)
    result = CliRunner().invoke(app, ["train", str(root / "data"), "-o", str(root / "run"), *TINY])
    assert result.exit_code == 0, result.stderr
    return root / "run"


def sample_args(run: Path, out: Path, *extra: str) -> list[str]:
    return ["sample", str(run), "-n", str(N), "--batch-size", "2", "--sampler", "ddpm", "--steps", "100",
            "--seed", "5",
            "--precision", "fp32", "--device", "cpu", "-o", str(out), *extra]


def kill_midway(args: list[str], out: Path) -> None:
    """Run `dtools sample` in a process and SIGKILL it once a few of its PNGs are there."""
    proc = subprocess.Popen([str(DTOOLS), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while len(list_image_files(out, check=False)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.kill()
    assert proc.wait() == -9, "the sampling finished before it could be killed"


def pngs(folder: Path) -> dict[str, bytes]:
    """The folder's finished images, as every dtools command that reads a folder lists them: a kill can
    leave a writer's hidden temp (`.000003.<pid>.<rand>.tmp.png`), which the continuing run sweeps away."""
    return {p.name: p.read_bytes() for p in list_image_files(folder, check=False)}


def test_killed_sample_continues_to_the_uninterrupted_bytes(run, tmp_path, runner):
    straight = tmp_path / "straight"
    assert runner.invoke(app, sample_args(run, straight)).exit_code == 0
    want = pngs(straight)
    assert len(want) == N

    out = tmp_path / "out"
    kill_midway(sample_args(run, out), out)
    assert (out / RECORD_FILE).is_file()
    partial = pngs(out)
    assert 4 <= len(partial) < N
    for name, data in partial.items():  # whole images only, each the uninterrupted run's
        assert data == want[name], name
        Image.open(out / name).load()

    again = runner.invoke(app, sample_args(run, out))
    assert again.exit_code == 0, again.stderr
    assert f"continuing the unfinished run in {out}: {len(partial)} of its {N} images" in again.stderr
    assert pngs(out) == want
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # record, temps, lock gone
    # finished: the same command again is refused as before (the folder holds a finished output)
    assert runner.invoke(app, sample_args(run, out)).exit_code == 1


def test_other_options_are_refused_without_force(run, tmp_path, runner):
    out = tmp_path / "out"
    kill_midway(sample_args(run, out), out)
    other = runner.invoke(app, sample_args(run, out, "--seed", "6"))
    assert other.exit_code == 1
    line = other.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith(f"Error: {out} holds an unfinished `dtools sample` run with "
                                                 "other options (seed 5, now 6)"), other.stderr
    forced = runner.invoke(app, sample_args(run, out, "--seed", "6", "--force"))
    assert forced.exit_code == 0, forced.stderr
    assert len(pngs(out)) == N and not (out / RECORD_FILE).exists()


def test_save_stats_is_whole_or_absent(tmp_path, monkeypatch):
    """A full disk while `fid --save-stats` writes: no file under the name, no temp file, an OSError
    that reads as ENOSPC; an earlier file of that name stays as it was."""
    from safetensors import SafetensorError

    import dtools.tensorfile as tensorfile
    from dtools.fid.stats import Stats, save_stats

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                              '"No space left on device" })')

    stats = Stats(np.zeros(4), np.eye(4), 10, "ref", "0" * 64)
    target = tmp_path / "ref.safetensors"
    save_stats(target, stats, with_features=False)
    before = target.read_bytes()
    monkeypatch.setattr(tensorfile, "save_file", full)
    for path, force in ((tmp_path / "new.safetensors", False), (target, True)):
        with pytest.raises(OSError) as e:
            save_stats(path, stats, with_features=False, force=force)
        assert e.value.errno == errno.ENOSPC
    assert not (tmp_path / "new.safetensors").exists() and target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.safetensors"]
