"""A run's post-hoc EMA, the job behind `dtools ema`: read the snapshots of RUN/posthoc/, weigh them to
make the EMA of a chosen length (dtools.posthoc_ema), write it as a model checkpoint.

Every snapshot is checked like any checkpoint (dtools.checkpoint) and against the others (one network
config, one schedule, one parameterization); the weights are summed in float64, one snapshot at a time,
so the memory is that of two networks whatever the count. The checkpoint written is the last
snapshot's header with "ema_length" the chosen width and "ema_posthoc" saying how it was made; its
"raw" weights are the run's own when RUN/model.safetensors is of the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dtools.checkpoint import RUN_MODEL_FILE, read_info, read_model, save_model
from dtools.ema import power_gamma
from dtools.errors import DtoolsError
from dtools.posthoc_ema import SNAPSHOT_DIR, TRACKED, parse_snapshot_name, solve
from dtools.progress import log as log_line

# where the reconstruction is poor enough to say so: the target is narrower or wider than the
# snapshots can make (posthoc_ema.solve's relative L² error of the profile)
POOR_FIT = 0.01
SAME = ("model", "model_type", "parameterization", "betas", "image_size", "channels", "condition")


@dataclass(frozen=True)
class Snapshot:
    path: Path
    step: int  # the EMA's updates
    sigma_rel: float


def snapshots(run: str | Path) -> list[Snapshot]:
    """RUN/posthoc/'s snapshots by step, then width; a clear error when there are none."""
    run = Path(run)
    if not run.is_dir():
        raise DtoolsError(f"{run}: not a run folder of `dtools train` (post-hoc EMA reads "
                          f"RUN/{SNAPSHOT_DIR}/)")
    folder = run / SNAPSHOT_DIR
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            parsed = parse_snapshot_name(p.name)
            if parsed is not None and p.is_file():
                found.append(Snapshot(p, *parsed))
    if not found:
        raise DtoolsError(f"{run}: no post-hoc EMA snapshots in {folder}; train with --posthoc-ema N "
                          "(e.g. 16) to keep them")
    return sorted(found, key=lambda s: (s.step, s.sigma_rel))


def check_snapshots(found: list[Snapshot]) -> dict[str, Any]:
    """Each snapshot's header, checked against its name and the last one's; returns the last one's."""
    last = read_info(found[-1].path, fit=True)
    for s in found:
        info = last if s is found[-1] else read_info(s.path, fit=True)
        if info.get("step") != s.step or info.get("ema_length") is None \
                or abs(info["ema_length"] - s.sigma_rel) > 5e-4:
            raise DtoolsError(f"{s.path}: its header does not match its name (a file renamed or copied in?)")
        odd = next((k for k in SAME if info.get(k) != last.get(k)), None)
        if odd is not None:
            raise DtoolsError(f"{s.path}: a snapshot of another model than {found[-1].path} (its {odd!r} "
                              "differs); keep one run's snapshots in RUN/posthoc/")
    if last.get("model_type") != "unet":
        raise DtoolsError(f"{found[-1].path}: post-hoc EMA is for the denoisers `dtools train` trains")
    return last


def reconstruct(run: str | Path, sigma_rel: float, log: Callable[[str], None] = log_line,
                checked: tuple[list[Snapshot], dict[str, Any]] | None = None,
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The EMA of width `sigma_rel` at the run's last snapshot: (its weights, the checkpoint header)."""
    found, last = checked if checked is not None else read_snapshots(run)
    t = found[-1].step
    fit = solve([(s.sigma_rel, s.step) for s in found], sigma_rel, t)
    if fit.error > POOR_FIT:
        why = "keep more snapshots" if sigma_rel < min(TRACKED) else "it is wider than they reach"
        log(f"Warning: the snapshots make an EMA of length {sigma_rel:g} only roughly (relative error "
            f"{fit.error:.3f} of its profile): {why}")
    total: dict[str, torch.Tensor] = {}
    for s, x in zip(found, fit.coefficients, strict=True):
        if x == 0.0:
            continue
        weights = read_model(s.path)[0]["ema"]
        for k, v in weights.items():
            if v.is_floating_point():
                acc = total.get(k)
                total[k] = v.double() * float(x) if acc is None else acc.add_(v.double(), alpha=float(x))
            else:
                total[k] = v
    ema = {k: v.float() if v.is_floating_point() else v for k, v in total.items()}
    header = {k: v for k, v in last.items() if k not in ("format", "format_version", "dtools_version",
                                                         "weights", "ema_decay")}
    header["ema_length"] = sigma_rel
    header["ema_posthoc"] = {"snapshots": len(found), "tracked": sorted({s.sigma_rel for s in found}),
                             "gamma": power_gamma(sigma_rel), "error": fit.error}
    return ema, header


def read_snapshots(run: str | Path) -> tuple[list[Snapshot], dict[str, Any]]:
    """RUN's snapshots and the last one's header, every one checked (`check_snapshots`)."""
    found = snapshots(run)
    return found, check_snapshots(found)


def save(run: str | Path, out: str | Path, ema: dict[str, torch.Tensor], header: dict[str, Any],
         force: bool) -> bool:
    """Write the reconstruction as a model checkpoint; with the run's raw weights when RUN/model.safetensors
    is of the same step. Returns whether they went in."""
    weights = {"ema": ema}
    final = Path(run) / RUN_MODEL_FILE
    if final.is_file() and read_info(final).get("step") == header.get("step"):
        sets = read_model(final)[0]
        if "raw" in sets:
            weights["raw"] = sets["raw"]
    meta = {k: v for k, v in header.items() if k not in ("model", "model_type")}
    save_model(out, weights, config=header["model"], model_type=header["model_type"], meta=meta, force=force)
    return "raw" in weights
