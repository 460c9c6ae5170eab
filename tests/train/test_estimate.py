"""What a run says about its own length: the step clock, the estimate and its warnings."""

from __future__ import annotations

import pytest

from dtools import train as training
from dtools.progress import duration
from dtools.train.estimate import StepClock, data_warning, estimate_lines

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_clock_leaves_out_the_first_step_and_reports_once():
    now = FakeTime()
    clock = StepClock(start=0, total=1000, now=now)
    now.t += 3.0  # the first step pays for warm-up
    clock.tick(1)
    assert clock.seconds_per_step() is None and clock.eta_text() == "ETA 49m57s"  # first step's pace
    assert not clock.ready() and not clock.provisional()
    for step in range(2, 22):
        now.t += 0.5
        clock.tick(step)
        assert clock.ready() == (step >= 7)  # 3 s of measured steps after the first
    assert clock.seconds_per_step() == pytest.approx(0.5)
    assert clock.eta_text() == f"ETA {duration(0.5 * (1000 - 21))}" == "ETA 8m09s"
    clock.reported = True
    assert not clock.ready()


def test_a_slow_first_step_gets_a_provisional_estimate():
    now = FakeTime()
    clock = StepClock(start=10, total=25_010, now=now)
    assert clock.eta_text() == "ETA -"
    now.t += 52.0  # the seed64 preset's batch of 128 at 64x64 on a 2-core CPU
    clock.tick(11)
    assert clock.provisional() and clock.eta_text() == "ETA 15.0 days"
    now.t += 50.0
    clock.tick(12)
    assert not clock.provisional() and clock.ready() and clock.seconds_per_step() == pytest.approx(50.0)


def test_estimate_lines_warn_past_a_day_unless_a_budget_ends_the_run_sooner():
    line, warning = estimate_lines(50.0, 25_000, 25_000, None, "steps 2-3")
    assert line == ("estimate: 50 s/step (steps 2-3), so the run's 25000 steps take about 14.5 days; "
                    "checkpoints and sample grids come on top")
    assert warning.startswith("warning: this run would take about 14.5 days on this machine;")
    line, warning = estimate_lines(50.0, 24_000, 25_000, 900.0, "steps 2-3")
    assert "the 24000 steps to step 25000 take about 13.9 days, but --max-minutes ends this session " \
           "after about 18 of them" in line
    assert warning is None
    assert estimate_lines(0.2, 2000, 2000, None, "x")[1] is None


def test_durations_read_naturally():
    assert [duration(s) for s in (0.04, 9.96, 45, 425, 3 * 3600 + 720, 9.1 * 86400)] == [
        "0.0s", "10.0s", "45s", "7m05s", "3h12m", "9.1 days"]


def test_a_tiny_data_set_trained_many_epochs_gets_a_warning(data8, tmp_path, config, emoji):
    five = emoji(tmp_path / "five", 5, 8)
    cfg = config(five, tmp_path / "run", max_steps=2000, batch_size=16)  # 6400 passes over 5 images
    assert data_warning(cfg).startswith("warning: only 5 training images, and 2000 steps of 16 show each "
                                        "about 6400 times")
    assert data_warning(config(five, tmp_path / "run", max_steps=5, batch_size=16)) is None  # 16 epochs
    assert data_warning(config(data8, tmp_path / "run", max_steps=2000)) is not None  # 24 images
    lines: list[str] = []
    training.train(config(five, tmp_path / "r", max_steps=8, batch_size=16), progress=False, log=lines.append)
    assert any(line.startswith("warning: only 5 training images") for line in lines)


def test_a_run_logs_its_estimate_after_the_first_steps(data8, tmp_path, config):
    lines: list[str] = []
    cfg = config(data8, tmp_path / "run", max_steps=30, save_every=100)
    result = training.train(cfg, progress=False, log=lines.append)
    estimates = [line for line in lines if line.startswith("estimate: ")]
    assert len(estimates) == 1, lines
    assert " s/step (steps 2-" in estimates[0] or " ms/step (steps 2-" in estimates[0]
    assert "steps to step 30 take about" in estimates[0]
    assert training.summary(result).startswith("done: 30 steps, loss ")
    assert "(mean of the last step), " in training.summary(result)
