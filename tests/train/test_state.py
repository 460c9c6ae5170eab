"""The training state (train-state.safetensors): damaged, foreign or hand-edited ones are one-line errors."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save_file

from dtools import train as training
from dtools.errors import DtoolsError
from dtools.train.state import read_state_header

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("damage", ["truncate", "foreign", "garbage"])
def test_damaged_training_state_is_a_one_line_error(data8, tmp_path, damage, config, fit):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=1))
    state = run / training.STATE_FILE
    if damage == "truncate":
        data = state.read_bytes()
        state.write_bytes(data[: len(data) // 2])
    elif damage == "foreign":
        state.write_bytes((run / training.MODEL_FILE).read_bytes())
    else:
        state.write_bytes(b"\x00" * 64)
    with pytest.raises(DtoolsError) as e:
        fit(config(data8, run, max_steps=2), resume=True)
    assert "\n" not in str(e.value) and str(state) in str(e.value)


def test_state_from_another_model_is_refused(data8, tmp_path, config, fit):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=1))
    with pytest.raises(DtoolsError, match="does not fit this model"):
        fit(config(data8, run, max_steps=2, base_channels=16), resume=True)


def test_hand_edited_state_header_is_a_one_line_error(data8, tmp_path, config, fit, state_tensors, betas):
    run = tmp_path / "run"
    fit(config(data8, run, max_steps=1))
    state = run / training.STATE_FILE
    info = read_state_header(state)
    tensors = state_tensors(run)
    for damage in ({"betas": ["x"]}, {"train": [1]}, {"step": "5"}):
        save_file(tensors, str(state), metadata={"dtools": json.dumps({**info, **damage})})
        with pytest.raises(DtoolsError, match="damaged training state"):
            read_state_header(state)
    bad_lr = {**info, "train": {**info["train"], "lr": "x"}}
    save_file(tensors, str(state), metadata={"dtools": json.dumps(bad_lr)})
    with pytest.raises(DtoolsError, match="saved training config is damaged"):
        training.resume_config(read_state_header(state)["train"], betas, {})
