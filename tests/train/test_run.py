"""The run folder: a new run refuses an earlier one's folder unless --resume or --force; metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from dtools import train as training
from dtools.errors import DtoolsError
from dtools.train.run import append_metric, read_metrics, write_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_existing_run_needs_resume_or_force(data8, tmp_path, config, fit):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=2))
    with pytest.raises(DtoolsError, match="already exists.*--resume.*--force"):
        fit(config(data8, run, max_steps=2))
    (run / "notes.txt").write_text("mine")
    result = fit(config(data8, run, max_steps=1), force=True)
    assert result.step == 1 and (run / "notes.txt").read_text() == "mine"  # --force removes only our files
    with pytest.raises(DtoolsError, match="nothing to resume"):
        fit(config(data8, tmp_path / "new", max_steps=2), resume=True)


def test_metrics_keep_the_lines_up_to_the_checkpoint(tmp_path):
    path = tmp_path / training.METRICS_FILE
    write_metrics(path, [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}])
    append_metric(path, {"step": 3, "loss": 0.3})
    with open(path, "a") as f:
        f.write('{"step": 4, "lo')  # a line torn by a kill
    assert [r["step"] for r in read_metrics(path, 2)] == [1, 2]
    assert [r["step"] for r in read_metrics(path, 9)] == [1, 2, 3]
    assert json.loads(path.read_text().splitlines()[2]) == {"step": 3, "loss": 0.3}
    assert read_metrics(tmp_path / "missing.jsonl", 9) == []
