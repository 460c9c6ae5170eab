"""What a dtools file or run folder holds, read from headers and small text files only (no weights are
loaded): the job behind `dtools info`.

`inspect(path)` recognises a model checkpoint, a training state and FID statistics by the "format" of
their header (dtools.tensorfile), and a run folder of `dtools train` by its files; it returns an
`Info`: a plain dict for --json, and the same facts as labelled rows for people.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtools.checkpoint import MODEL_FORMAT, class_names, read_info
from dtools.errors import DtoolsError
from dtools.models import DEFAULT_MODEL, MODEL_TYPES
from dtools.progress import fmt_time
from dtools.tensorfile import read_header, tensor_shapes
from dtools.train.run import (
    CONFIG_FILE,
    GUIDE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SAMPLES_DIR,
    STATE_FILE,
    read_metrics,
)
from dtools.train.state import STATE_FORMAT, read_state_header

STATS_FORMAT = "dtools.fid-stats"  # dtools.fid.stats's (not imported: it loads torch-fidelity)
LOSS_KEYS = tuple(dict.fromkeys(k for m in MODEL_TYPES.values() for k in m.losses))  # metrics.jsonl's losses


@dataclass
class Info:
    """What `dtools info` shows: `facts` (the --json object) and `rows` (label, text) for people."""

    path: str
    kind: str
    facts: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str]] = field(default_factory=list)

    def text(self) -> str:
        width = max((len(label) for label, _ in self.rows), default=0)
        lines = [f"{self.path}: {self.kind}"]
        lines += [f"  {label.ljust(width)}  {value}" for label, value in self.rows]
        return "\n".join(lines)


def inspect(path: str | os.PathLike) -> Info:
    """An Info for a run folder, a model checkpoint, a training state or an FID statistics file."""
    p = Path(path)
    if p.is_dir():
        return _run(p)
    header = read_header(p, None)
    fmt = header.get("format")
    if fmt == MODEL_FORMAT:
        return _model(p, read_info(p, fit=True))
    if fmt == STATE_FORMAT:
        return _state(p, read_state_header(p))  # its fields checked as --resume checks them
    if fmt == STATS_FORMAT:
        return _stats(p, header)
    raise DtoolsError(f"{p}: a {fmt!r} file, which dtools info does not describe")


# ---------------------------------------------------------------------------------------------
# Model checkpoints


def _images_per_step(train: dict[str, Any]) -> int | None:
    batch = train.get("batch_size")
    if not isinstance(batch, int):
        return None
    if train.get("model_type") == "dcgan":
        d = str(train.get("d_steps") or "1:1").split(":")[0]
        return batch * int(d) if d.isascii() and d.isdigit() else None
    return batch


def _schedule(info: dict[str, Any]) -> dict[str, Any]:
    betas = [float(b) for b in info["betas"]]
    alpha_bar = math.prod(1.0 - b for b in betas)
    return {"name": (info.get("train") or {}).get("beta"), "T": len(betas), "beta_first": betas[0],
            "beta_last": betas[-1], "alpha_bar_last": alpha_bar,
            "terminal_snr": alpha_bar / (1.0 - alpha_bar) if alpha_bar < 1 else None}


def _parameters(path: Path, info: dict[str, Any]) -> int:
    """Parameters of the default weight set (the tensors without a set's prefix)."""
    names = info.get("weights") if isinstance(info.get("weights"), list) else ["ema", "raw"]
    others = tuple(f"{n}." for n in names[1:])
    return sum(math.prod(shape) for k, shape in tensor_shapes(path).items() if not k.startswith(others))


def model_facts(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The --json facts of a model checkpoint."""
    train = info.get("train") if isinstance(info.get("train"), dict) else {}
    step = info.get("step")
    per_step = _images_per_step(train)
    seen = info.get("images_seen", step * per_step if isinstance(step, int) and per_step else None)
    facts = {"model_type": info["model_type"], "model": info["model"], "parameters": _parameters(path, info),
             "weights": info.get("weights", ["ema", "raw"]), "step": step, "images_seen": seen,
             "training_seconds": info.get("elapsed"), "ema_decay": info.get("ema_decay"),
             "ema_warmup": train.get("ema_warmup"), "ema_length": info.get("ema_length"),
             "ema_posthoc": info.get("ema_posthoc"),
             "data": {"path": train.get("data"), "images": train.get("num_images"),
                      "fingerprint": train.get("data_fingerprint")},
             "dtools_version": info.get("dtools_version")}
    if isinstance(info.get("packed"), dict):
        facts["packed"] = info["packed"]
    if MODEL_TYPES[info["model_type"]].schedule:
        facts["parameterization"] = info["parameterization"]
        facts["min_snr_gamma"] = train.get("min_snr_gamma")
        facts["min_snr_floor"] = train.get("min_snr_floor", 0.0)
        facts["learned_weight"] = train.get("learned_weight", False)
        facts["t_dist"] = train.get("t_dist", "uniform")
        facts["schedule"] = _schedule(info)
    classes = class_names(info)
    if classes is not None:
        facts["classes"] = list(classes)
        facts["cond_drop"] = train.get("cond_drop", 0.1)
    if train.get("init_from"):
        facts["init_from"] = {"checkpoint": train["init_from"], "weights": train.get("init_weights", "ema")}
    return facts


def _network(facts: dict[str, Any]) -> str:
    m = facts["model"]
    size = f"{m.get('image_size')}x{m.get('image_size')}x{m.get('in_channels', m.get('channels'))}"
    if "channel_mult" in m:  # a U-Net's config
        mult = ",".join(map(str, m.get("channel_mult", [])))
        attention = ",".join(map(str, m.get("attention_resolutions", []))) or "none"
        shape = (f"U-Net {size}, {m.get('base_channels')} base channels x ({mult}), "
                 f"{m.get('num_res_blocks')} block(s) per level, attention at {attention}")
    else:
        what = MODEL_TYPES[facts["model_type"]].network
        shape = f"{what} {size}, {m.get('base_channels')} channels, z of {m.get('latent_dim')}"
    return f"{shape}; {facts['parameters'] / 1e6:.2f}M parameters"


def _num(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "?"


def _lengths(values: Any) -> str:
    if not isinstance(values, list):
        return "?"
    return ", ".join(f"{v:g}" if isinstance(v, int | float) else "?" for v in values)


def model_rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """The rows people read for a model checkpoint."""
    rows = [("model", f"{facts['model_type']}: {_network(facts)}")]
    if "schedule" in facts:
        s = facts["schedule"]
        name = f"{s['name']}, " if s["name"] else ""
        loss = f", loss weight Min-SNR-{facts['min_snr_gamma']:g}" if facts.get("min_snr_gamma") else ""
        if loss and facts.get("min_snr_floor"):
            loss += f" (at least {facts['min_snr_floor']:g} where SNR < 1)"
        if facts.get("learned_weight"):
            loss += ", learned loss weight u(σ)"
        t_dist = f", t drawn {facts['t_dist']}" if facts.get("t_dist", "uniform") != "uniform" else ""
        rows += [("predicts", facts["parameterization"] + loss + t_dist),
                 ("schedule", f"{name}T={s['T']}, beta {s['beta_first']:.3g} .. {s['beta_last']:.3g}, "
                              f"alpha_bar_T {s['alpha_bar_last']:.3g}")]
    if "classes" in facts:
        names = facts["classes"]
        shown = ", ".join(f"{i}={c}" for i, c in enumerate(names[:12])) + (" ..." if len(names) > 12 else "")
        rows.append(("classes", f"{len(names)}: {shown}; label dropout {facts['cond_drop']:g} "
                                "(sample --class, --guidance)"))
    step, seen, secs = facts["step"], facts["images_seen"], facts["training_seconds"]
    trained = [f"step {step}" if step is not None else "step unknown"]
    trained.append(f"{seen:,} images seen" if seen is not None else "images seen unknown")
    trained.append(fmt_time(secs) + " of training" if secs is not None else "training time not recorded")
    rows.append(("trained", ", ".join(trained)))
    held = f"weights held: {', '.join(facts['weights'])}"
    made = facts.get("ema_posthoc")
    if facts.get("ema_length") is not None and made:
        how = f"made after training from {made.get('snapshots')} snapshots (`dtools ema`)"
        chosen = made.get("chosen_by")
        if isinstance(chosen, dict):
            how += (f", chosen of {_lengths(chosen.get('lengths'))} by FID {_num(chosen.get('fid'))} of "
                    f"{chosen.get('samples')} samples against {chosen.get('reference')}")
        rows.append(("EMA", f"post-hoc power EMA (EDM2), width {facts['ema_length']:g} of the run, {how}; "
                            f"{held}"))
    elif facts.get("ema_length") is not None:
        rows.append(("EMA", f"power EMA (EDM2), width {facts['ema_length']:g} of the run; {held}"))
    elif facts["ema_decay"] is not None:
        warm = " with warm-up" if facts["ema_warmup"] else ""
        rows.append(("EMA", f"decay {facts['ema_decay']}{warm}; {held}"))
    d = facts["data"]
    if d["path"] is not None:
        rows.append(("data", f"{d['path']} ({d['images']} images, fingerprint {d['fingerprint'] or '-'})"))
    if "init_from" in facts:
        init = facts["init_from"]
        rows.append(("init from", f"{init['checkpoint']} ({init['weights']} weights)"))
    if "packed" in facts:
        rows.append(("packed", _packed(facts["packed"])))
    return rows


def _packed(p: dict[str, Any]) -> str:
    """Where a `dtools pack` checkpoint came from, in one line."""
    sha = p.get("sha256")
    sha = sha[:16] if isinstance(sha, str) else "?"
    err = p.get("max_rel_error")
    text = (f"{p.get('weights', '?')} weights in {p.get('dtype', '?')} by `dtools pack` on "
            f"{p.get('date', '?')}, from {p.get('from', '?')} (sha256 {sha})")
    if isinstance(err, int | float):
        text += f"; largest rounding of a weight {100 * err:.3f} %"
    return text


def _model(path: Path, info: dict[str, Any]) -> Info:
    facts = model_facts(path, info)
    return Info(str(path), f"{info['model_type']} model checkpoint", facts, model_rows(facts))


# ---------------------------------------------------------------------------------------------
# Training states, FID statistics


def _state(path: Path, info: dict[str, Any]) -> Info:
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    facts = {"model_type": info.get("model_type", DEFAULT_MODEL), "step": info.get("step"),
             "training_seconds": info.get("elapsed"), "ema_updates": info.get("ema_updates"),
             "epoch": data.get("epoch"), "position": data.get("pos"), "images": data.get("n"),
             "model": info.get("model")}
    rows = [("model", str(facts["model_type"])),
            ("step", f"{facts['step']} ({facts['ema_updates']} EMA updates)"),
            ("data", f"epoch {facts['epoch']}, image {facts['position']} of {facts['images']}")]
    if facts["training_seconds"] is not None:
        rows.append(("trained", fmt_time(facts["training_seconds"])))
    rows.append(("resume", f"dtools train --resume -o {path.parent}"))
    return Info(str(path), "training state (what --resume reads)", facts, rows)


def _stats(path: Path, info: dict[str, Any]) -> Info:
    facts = {"images": info.get("images"), "source": info.get("source"),
             "weights_sha256": info.get("weights_sha256"), "feature_layer": info.get("feature_layer"),
             "features": bool(info.get("features"))}
    rows = [("images", str(facts["images"])), ("source", str(facts["source"])),
            ("Inception", f"sha256 {str(facts['weights_sha256'])[:16]}..., layer {facts['feature_layer']}"),
            ("features", "kept (KID, precision/recall)" if facts["features"] else "not kept (FID only)")]
    return Info(str(path), "FID statistics", facts, rows)


# ---------------------------------------------------------------------------------------------
# Run folders


def loss_summary(path: Path) -> dict[str, Any] | None:
    """From metrics.jsonl: records, last step and for each loss its first, last and lowest window mean."""
    records = read_metrics(path)
    if not records:
        return None
    out: dict[str, Any] = {"records": len(records), "last_step": records[-1]["step"]}
    for key in LOSS_KEYS:
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        if points:
            low = min(points, key=lambda p: p[1])
            out[key] = {"first": points[0][1], "last": points[-1][1], "min": low[1], "min_step": low[0]}
    if isinstance(records[-1].get("img_per_s"), int | float):
        out["img_per_s"] = records[-1]["img_per_s"]
    return out


def _run(run: Path) -> Info:
    files = {p.name for p in run.iterdir()}
    if not files & {MODEL_FILE, STATE_FILE, CONFIG_FILE, METRICS_FILE}:
        raise DtoolsError(f"{run}: a folder, but not a run of dtools train (no {MODEL_FILE} or "
                          f"{CONFIG_FILE})")
    facts: dict[str, Any] = {"checkpoint": None}
    rows: list[tuple[str, str]] = []
    if MODEL_FILE in files:
        facts["checkpoint"] = model_facts(run / MODEL_FILE, read_info(run / MODEL_FILE, fit=True))
    if STATE_FILE in files:
        state = read_state_header(run / STATE_FILE)
        facts["state_step"] = state.get("step")
    rows += _more_rows(facts, state if STATE_FILE in files else {})
    if METRICS_FILE in files:
        facts["losses"] = loss_summary(run / METRICS_FILE)
        rows += _loss_rows(facts["losses"])
    packed = (facts["checkpoint"] or {}).get("packed") is not None and STATE_FILE not in files
    grids = sorted((run / SAMPLES_DIR).glob("step_*.png")) if SAMPLES_DIR in files else []
    facts["last_samples"] = str(grids[-1]) if grids else None
    if grids or not packed:
        rows.append(("samples", f"{grids[-1]} ({len(grids)} grids)" if grids else "none"))
    if GUIDE_FILE in files:
        step = read_info(run / GUIDE_FILE).get("step")
        facts["guide"] = {"path": str(run / GUIDE_FILE), "step": step}
        rows.append(("guide", f"{run / GUIDE_FILE} (step {step}; sample --guide {run} --guidance W)"))
    if facts.get("state_step") is not None:
        rows.append(("resume", f"dtools train --resume -o {run}  (state at step {facts['state_step']})"))
    return Info(str(run), "packed model (`dtools pack`)" if packed else "training run", facts, rows)


def _more_rows(facts: dict[str, Any], state: dict[str, Any]) -> list[tuple[str, str]]:
    """The checkpoint's rows (its training time from the state when the checkpoint predates recording it)."""
    ckpt = facts["checkpoint"]
    if ckpt is None:
        return [("checkpoint", "none yet (if the run has stopped, the same command starts it over)")]
    if ckpt["training_seconds"] is None and state.get("step") == ckpt["step"]:
        ckpt["training_seconds"] = state.get("elapsed")
    return model_rows(ckpt)


def _loss_rows(losses: dict[str, Any] | None) -> list[tuple[str, str]]:
    if losses is None:
        return [("losses", "none logged yet")]
    rows = []
    for key in LOSS_KEYS:
        if key in losses:
            v = losses[key]
            lowest = f"lowest {v['min']:.4g} at step {v['min_step']}"
            rows.append((key, f"{v['first']:.4g} -> {v['last']:.4g} ({lowest})"))
    speed = f", {losses['img_per_s']:.0f} img/s at the end" if "img_per_s" in losses else ""
    rows.append(("metrics", f"{losses['records']} records to step {losses['last_step']}{speed}"))
    return rows
