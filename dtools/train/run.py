"""The run folder RUN of `dtools train`: the names of its files, the checks before a new run, a --resume
or a --force, and the two text files it holds (metrics.jsonl and config.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dtools.errors import DtoolsError
from dtools.fileio import atomic_write_bytes

MODEL_FILE = "model.safetensors"
STATE_FILE = "train-state.safetensors"
METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
ACCURACY_PLOT = "accuracy.png"  # a GAN's discriminator accuracy
CONFIG_FILE = "config.json"
SAMPLES_DIR = "samples"


def resumable_state(run: Path) -> Path:
    """RUN's training state file, or a clear error when there is nothing to resume."""
    if not (run / STATE_FILE).is_file():
        raise DtoolsError(f"{run}: nothing to resume (no {STATE_FILE}); start a new run without --resume")
    return run / STATE_FILE


def prepare_run_dir(run: Path, resume: bool, force: bool) -> None:
    """Check RUN for a new run (empty or missing), a --resume (a state to continue), or a --force (the
    files of an earlier run are deleted; other files stay); create it when missing."""
    if run.exists() and not run.is_dir():
        raise DtoolsError(f"{run} exists and is not a folder; -o names the run folder")
    if resume:
        resumable_state(run)
        return
    if run.exists() and any(run.iterdir()):
        if not force:
            raise DtoolsError(
                f"{run} already exists and is not empty; pass --resume to continue its run, or --force to "
                "start over"
            )
        for name in (MODEL_FILE, STATE_FILE, METRICS_FILE, LOSS_PLOT, ACCURACY_PLOT, CONFIG_FILE):
            (run / name).unlink(missing_ok=True)
        for p in (run / SAMPLES_DIR).glob("step_*.png"):
            p.unlink()
    run.mkdir(parents=True, exist_ok=True)


def write_config(run: Path, config: dict[str, Any]) -> None:
    """RUN/config.json: the resolved configuration, for people (nothing reads it back)."""
    atomic_write_bytes(run / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode(), force=True)


def read_metrics(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """The records of an earlier session up to its last checkpoint (a torn last line is skipped)."""
    records = []
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= up_to_step:
                records.append(rec)
    return records


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode(), force=True)


def append_metric(path: Path, record: dict[str, Any]) -> None:
    # Live log for `tail -f`; the file is rewritten atomically at every checkpoint.
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
