"""The run folder: a new run refuses an earlier one's folder unless --resume or --force; metrics.jsonl."""

from __future__ import annotations

import pytest

from dtools.errors import DtoolsError

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
