"""Two writers of one folder: the second is refused at once in one line naming the folder, whatever it
is (train -o RUN, with or without --resume; sample -o DIR); a writer killed with SIGKILL leaves
nothing stuck: the lock dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dtools.errors import DtoolsError
from dtools.locks import LOCK_FILE, acquire

pytestmark = pytest.mark.usefixtures("one_thread")

HOLD = textwrap.dedent("""
    import sys, time
    from dtools.locks import acquire
    lock = acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(120)
""")
TINY = ["--beta", "cosine", "--base-channels", "8", "--channel-mult", "1,2", "--res-blocks", "1",
        "--attention", "none", "--batch-size", "4", "--sample-every", "0", "--precision", "fp32",
        "--device", "cpu"]


@pytest.fixture
def holder():
    """`holder(folder)`: another process that holds the folder's lock until it is killed."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def one_line(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_a_held_folder_refuses_a_second_lock_and_a_killed_holder_frees_it(tmp_path, holder):
    folder = tmp_path / "out"
    proc = holder(folder)
    message = rf"^{folder}: another dtools process \(pid {proc.pid}\) is writing"
    with pytest.raises(DtoolsError, match=message):
        acquire(folder)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (folder / LOCK_FILE).exists()  # stale, but not held: nothing is stuck
    lock = acquire(folder)
    lock.release()
    assert list(folder.iterdir()) == []  # the lock file goes with its release


def test_second_train_is_refused_and_a_live_run_is_not_called_stopped(tmp_path, holder, runner, png_maker):
    from dtools.cli import app

    data = tmp_path / "data"
    png_maker(data, n=4, size=8)
    run = tmp_path / "run"
    ok = runner.invoke(app, ["train", str(data), "-o", str(run), *TINY, "--max-steps", "2"])
    assert ok.exit_code == 0, ok.stderr
    holder(run)
    for extra in ([], ["--resume"], ["--force"]):
        line = one_line(runner.invoke(app, ["train", str(data), "-o", str(run), *TINY, "--max-steps", "4",
                                            *extra]))
        assert line.startswith(f"Error: {run}: another dtools process") and "stopped" not in line, line
    # a new run killed before its first checkpoint, with --resume while another process still writes it
    fresh = tmp_path / "fresh"
    holder(fresh)
    line = one_line(runner.invoke(app, ["train", str(data), "-o", str(fresh), *TINY, "--resume"]))
    assert "another dtools process" in line and "stopped" not in line and "nothing to resume" not in line


def test_second_sample_into_a_folder_is_refused(tmp_path, holder, runner, png_maker):
    from dtools.cli import app

    data = tmp_path / "data"
    png_maker(data, n=4, size=8)
    run = tmp_path / "run"
    assert runner.invoke(app, ["train", str(data), "-o", str(run), *TINY, "--max-steps", "1"]).exit_code == 0
    out = tmp_path / "samples"
    holder(out)
    line = one_line(runner.invoke(app, ["sample", str(run), "-n", "2", "--steps", "2", "-o", str(out)]))
    assert line.startswith(f"Error: {out}: another dtools process")
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written beside the holder
