"""The run folder RUN of `dtools train`: the names of its files, the checks before a new run, a --resume
or a --force, and the two text files it holds (metrics.jsonl and config.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dtools.checkpoint import RUN_GUIDE_FILE, RUN_MODEL_FILE
from dtools.errors import DtoolsError
from dtools.fileio import atomic_write_bytes, sweep_temps
from dtools.locks import LOCK_FILE
from dtools.posthoc_ema import SNAPSHOT_DIR, parse_snapshot_name
from dtools.tensorfile import read_header

MODEL_FILE = RUN_MODEL_FILE
GUIDE_FILE = RUN_GUIDE_FILE  # the EMA model at --guide-at of the run: autoguidance's weaker model
STATE_FILE = "train-state.safetensors"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
ACCURACY_PLOT = "accuracy.png"  # a GAN's discriminator accuracy
CONFIG_FILE = "config.json"
SAMPLES_DIR = "samples"
POSTHOC_DIR = SNAPSHOT_DIR  # --posthoc-ema's snapshots (dtools.posthoc_ema)


RUN_FILES = (MODEL_FILE, STATE_FILE, METRICS_FILE, LOSS_PLOT, ACCURACY_PLOT, CONFIG_FILE, GUIDE_FILE)


def _leftover(p: Path) -> bool:
    """A file of a run, or the temp file of one cut off while being written (.model.x1y2.tmp.safetensors)."""
    if p.name in RUN_FILES:
        return True
    return p.name.startswith(".") and any(p.name.startswith(f".{Path(f).stem}.") and ".tmp" in p.name
                                          for f in RUN_FILES)


def entries(run: Path) -> list[Path]:
    """What RUN holds, but the lock file of the process writing it (dtools.locks), which is no run's file."""
    return [p for p in run.iterdir() if p.name != LOCK_FILE]


def unfinished(run: Path) -> bool:
    """Whether RUN holds a run that stopped before its first checkpoint: its config.json, perhaps the
    first metrics and sample grids, but no training state, and nothing else."""
    if not (run / CONFIG_FILE).is_file() or (run / STATE_FILE).exists():
        return False
    for p in entries(run):
        grids = p.name == SAMPLES_DIR and p.is_dir() and all(q.name.startswith("step_") for q in p.iterdir())
        snapshots = p.name == POSTHOC_DIR and p.is_dir() and all(snapshot_file(q) or q.name.startswith(".")
                                                                  for q in p.iterdir())
        if not (grids or snapshots or (p.is_file() and _leftover(p))):
            return False
    return True


def resumable_state(run: Path) -> Path:
    """RUN's training state file, or a clear error when there is nothing to resume."""
    if not (run / STATE_FILE).is_file():
        if run.is_dir() and unfinished(run):
            raise DtoolsError(f"{run}: its run stopped before its first checkpoint, so there is nothing to "
                              "resume; the same command without --resume starts it over")
        raise DtoolsError(f"{run}: nothing to resume (no {STATE_FILE}); start a new run without --resume")
    return run / STATE_FILE


def has_checkpoint(run: Path) -> bool:
    """Whether RUN holds a training state that --resume continues."""
    return (run / STATE_FILE).is_file()


def fresh_start(run: Path, data: str | None) -> str:
    """`--resume` on a RUN without a checkpoint (missing, empty, or a run killed before its first one):
    the run starts at step 0 with the options given, so a preempted job's fixed command line (always
    --resume) is safe from its first launch. Returns the line that says so; refuses a RUN that holds
    other files, or a missing DATA."""
    if run.exists() and not run.is_dir():
        raise DtoolsError(f"{run} exists and is not a folder; -o names the run folder")
    if run.is_dir() and entries(run) and not unfinished(run):
        raise DtoolsError(f"{run}: nothing to resume (no {STATE_FILE}), and it holds files that are not a "
                          "run's; give -o a new or empty folder")
    if data is None:
        raise DtoolsError(f"{run}: no checkpoint to resume yet (--resume), and no DATA to start the run "
                          "from; give the DATA folder too")
    return f"{run}: no checkpoint to resume yet (--resume); starting the run at step 0"


def check_run_dir(run: Path, resume: bool, force: bool) -> bool:
    """Refuse RUN unless it suits a new run (missing or empty), a --resume (a state to continue) or a
    --force; touches nothing. True when RUN holds a run that stopped before its first checkpoint,
    which a new run starts over without --force."""
    if run.exists() and not run.is_dir():
        raise DtoolsError(f"{run} exists and is not a folder; -o names the run folder")
    if resume:
        resumable_state(run)
        return False
    if run.exists() and entries(run) and not force:
        if unfinished(run):
            return True
        raise DtoolsError(
            f"{run} already exists and is not empty; pass --resume to continue its run, or --force to "
            "start over"
        )
    return False


def prepare_run_dir(run: Path, resume: bool, force: bool) -> None:
    """Check RUN (check_run_dir), then for a new run delete the files of an earlier one (other files
    stay) and create RUN when missing."""
    restart = check_run_dir(run, resume, force)
    if run.is_dir():
        sweep_temps(run)  # the temp files of a process killed while writing
    if resume:
        return
    if run.exists() and (force or restart):
        for p in run.iterdir():
            if p.is_file() and _leftover(p):
                p.unlink()
        for p in (run / SAMPLES_DIR).glob("step_*.png"):
            p.unlink()
        prune_snapshots(run, -1)
    run.mkdir(parents=True, exist_ok=True)


def snapshot_file(p: Path) -> bool:
    """A --posthoc-ema snapshot of RUN/posthoc/ by its name (step_SSSSSSS-W.WWW.safetensors)."""
    return p.is_file() and parse_snapshot_name(p.name) is not None


def last_snapshot(run: Path) -> tuple[int, float] | None:
    """(step, elapsed training seconds) of RUN/posthoc/'s last snapshot; None when it holds none."""
    folder = run / POSTHOC_DIR
    found = sorted((parse_snapshot_name(p.name)[0], p) for p in folder.iterdir() if snapshot_file(p)) \
        if folder.is_dir() else []
    if not found:
        return None
    step, path = found[-1]
    elapsed = read_header(path, None).get("elapsed")
    return step, float(elapsed) if isinstance(elapsed, int | float) else 0.0


def prune_snapshots(run: Path, after: int) -> None:
    """Delete RUN/posthoc/'s snapshots of steps after `after` (a resumed run takes them again; -1: all),
    and the temps of any cut off while being written."""
    folder = run / POSTHOC_DIR
    if not folder.is_dir():
        return
    sweep_temps(folder)
    for p in folder.iterdir():
        parsed = parse_snapshot_name(p.name)
        if parsed is not None and parsed[0] > after:
            p.unlink()


def write_config(run: Path, config: dict[str, Any]) -> None:
    """RUN/config.json: the resolved configuration, for people (nothing reads it back)."""
    atomic_write_bytes(run / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode(), force=True)


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl's records (none when it does not exist), up to step `up_to_step` when given (an earlier
    session's, up to its last checkpoint); a torn last line or a record without a step is skipped."""
    records = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and (
                    up_to_step is None or rec["step"] <= up_to_step):
                records.append(rec)
    return records


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode(), force=True)


def append_metric(path: Path, record: dict[str, Any]) -> None:
    # Live log for `tail -f`; the file is rewritten atomically at every checkpoint.
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
