"""The line a `dtools train` session ends with, written for a person: what was done, the loss and
over how many steps it was averaged, the time, and the file written (or why nothing was done)."""

from __future__ import annotations

from dtools.train.loop import TrainResult
from dtools.train.run import MODEL_FILE


def summary(result: TrainResult) -> str:
    """E.g. 'done: 2 steps, loss 0.123 (mean of the last 2 steps), 0.1 min; wrote runs/x/model.safetensors';
    an interrupted session's says where it stopped and how to continue."""
    if result.stopped == "interrupted":
        of = "" if result.total_steps is None else f"/{result.total_steps}"
        return (f"interrupted at step {result.step}{of}; saved {result.run / MODEL_FILE}; "
                f"continue with: dtools train --resume -o {result.run}")
    if result.stopped == "nothing_to_do":
        return (f"nothing to do: {result.run} is already at step {result.step} of {result.total_steps}; "
                "give a larger --max-steps (or --epochs) to train on")
    steps = result.step - result.start_step
    if result.stopped == "max_minutes":
        head = (f"time budget (--max-minutes) used up: step {result.step} of {result.total_steps} "
                f"({steps} this session)")
    elif result.start_step:
        head = f"done: {steps} more step{'s' * (steps != 1)}, {result.start_step} -> {result.step}"
    else:
        head = f"done: {steps} step{'s' * (steps != 1)}"
    n = result.loss_steps
    window = "the last step" if n == 1 else f"the last {n} steps"
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
    loss = f", {losses} ({'mean' if len(result.losses) == 1 else 'means'} of {window})" if losses else ""
    minutes = f"{result.elapsed / 60:.1f} min" + (" in all" if result.start_step else "")
    return f"{head}{loss}, {minutes}; wrote {result.run / MODEL_FILE}"
