"""`dtools train`'s job once its options are parsed: `configure` the run, whichever kind the command
line starts (a resumed one: dtools.train.resolve.resume_config on the saved configuration; a
fine-tuning one, --init-from: dtools.train.finetune.init_config; a new one:
dtools.train.resolve.new_config), then `main` prints it (--dry-run), starts it in several processes
(--nproc, dtools.train.distributed.launch) or trains it, and reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dtools.errors import DtoolsError, OptionError
from dtools.locks import acquire
from dtools.models import DEFAULT_MODEL, MODEL_TYPES, lookup_model
from dtools.progress import log as log_line
from dtools.schedule_io import load_schedule
from dtools.train import distributed
from dtools.train.config import MODEL_OPTIONS, TrainConfig
from dtools.train.data import data_classes, peek
from dtools.train.estimate import dry_run
from dtools.train.finetune import init_config
from dtools.train.loop import train
from dtools.train.resolve import DEFAULT_SCHEDULE, new_config, resume_config, schedule_of
from dtools.train.run import fresh_start, has_checkpoint, resumable_state
from dtools.train.signals import ABORT_EXIT
from dtools.train.state import read_state_header
from dtools.train.summary import summary


def main(
    out: str, data: str | None, beta: str | None, options: dict[str, Any], *, nproc: int, argv: list[str],
    resume: bool = False, force: bool = False, dry: bool = False, echo: Callable[[str], None] = print,
) -> int:
    """Run `dtools train` with `options` (dtools.train.OPTIONS names, None where not given); `argv` is
    the command line, which --nproc runs again in each process. Returns the exit code (130: stopped
    by a signal); a DtoolsError goes up to the command line's one-line report (under torchrun, from
    one process only: distributed.speaks)."""
    lock = None
    try:
        rank, world = distributed.env_rank()
        processes = max(nproc, world)
        distributed.check(processes, beta=beta)
        if not dry and nproc == 1 and rank == 0:  # the process that writes RUN (not --nproc's launcher)
            lock = acquire(out)
        if resume and not has_checkpoint(Path(out)):
            line = fresh_start(Path(out), data)
            resume = False
            if rank == 0:
                log_line(line)
        cfg = configure(out, data, beta, options, resume=resume)
        distributed.check(processes, cfg=cfg)
        if dry:
            echo(json.dumps(dry_run(cfg, resume=resume), indent=2))
            return 0
        if nproc > 1:
            return distributed.launch(distributed.without_nproc(argv), nproc)
        result = train(cfg, resume=resume, force=force)
    except DtoolsError as e:
        if not distributed.speaks(e):
            return 2 if isinstance(e, OptionError) else 1
        raise
    finally:
        if lock is not None:
            lock.release()
    code = ABORT_EXIT if result.stopped == "interrupted" else 0
    if not result.rank:  # one process of several: rank 0 reports
        log_line(summary(result))
    return code


def configure(
    out: str, data: str | None, beta: str | None, options: dict[str, Any], *, resume: bool = False
) -> TrainConfig:
    """The configuration of `dtools train -o OUT [DATA] [--beta BETA]` with `options` (OPTIONS names,
    None where not given; list options may be text like 1,2,2): a resumed run's, or a new one's."""
    options = {k: _ints(v, MODEL_OPTIONS[k].flag) if _is_ints(k) else v for k, v in options.items()}
    if resume:
        return _resumed(out, data, beta, options)
    if data is None:
        raise OptionError("DATA", "give the DATA folder (or --resume an existing run)")
    if options.get("init_weights") is not None and options.get("init_from") is None:
        raise OptionError("--init-weights", "applies with --init-from CKPT; drop it")
    if options.get("init_from") is not None:
        return init_config(out, data, beta, options)
    model_type = options.get("model_type") or DEFAULT_MODEL
    if not lookup_model(model_type).schedule:
        refuse_beta(beta, model_type)
        return new_config(data, out, None, np.zeros(0), peek(data), options, data_classes(data))
    beta = DEFAULT_SCHEDULE if beta is None else beta
    return new_config(data, out, beta, load_schedule(beta), peek(data), options, data_classes(data))


def refuse_beta(beta: str | None, model_type: str) -> None:
    """--beta given to a model without a noise schedule: a one-line error."""
    if beta is not None:
        denoisers = " or ".join(name for name, m in MODEL_TYPES.items() if m.schedule)
        raise DtoolsError(f"--beta applies to --model {denoisers}, not {model_type} (it has no noise "
                          "schedule); drop it")


def _is_ints(name: str) -> bool:
    return name in MODEL_OPTIONS and MODEL_OPTIONS[name].ints


def _ints(text: str | tuple[int, ...] | None, option: str) -> tuple[int, ...] | None:
    """Integers written like 1,2,2 ('' or none: no integers)."""
    if not isinstance(text, str):
        return text
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise OptionError(option, f"expected integers like 1,2,2, got {text!r}") from None


def _resumed(out: str, data: str | None, beta: str | None, options: dict[str, Any]) -> TrainConfig:
    info = read_state_header(resumable_state(Path(out)))
    if "betas" not in info:  # a model without a schedule
        refuse_beta(beta, info["model_type"])
    betas = np.asarray(info.get("betas", []), dtype=np.float64)
    if not np.array_equal(schedule_of(beta, betas), betas):
        raise DtoolsError(f"--beta {beta} differs from the schedule the run in {out} was trained with")
    saved = {**info["train"], "out": out}  # the folder named now: a run may have been moved or copied
    if data is not None:
        saved["data"] = data
    return resume_config(saved, betas, options)
