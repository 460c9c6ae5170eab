"""Hostile and corrupt safetensors files against every command that reads one (docs/formats.md, "Hostile
and corrupt files"): each kind of crafted file x each command ends in exit 1 and one line `Error: ...`
naming the file, without a traceback, within seconds, and before any network is built."""

from __future__ import annotations

import json
import math
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dtools.cli import app
from dtools.tensorfile import save_tensors
from tests.cli.test_sample import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
SECONDS = 10  # the most one refusal may take (they take milliseconds; a build or a load would take longer)


def make_tiny_pngs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (40 * i, 255 - 40 * i, 100)).save(folder / f"{i:06d}.png")


# ----------------------------------------------------------------------------- crafting files
def split(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's header (a dict) and its data section."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def assemble(header: dict | bytes, data: bytes, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def dtools_meta(header: dict) -> dict:
    return json.loads(header["__metadata__"]["dtools"])


def with_meta(good: Path, change: Callable[[dict], None]) -> bytes:
    """The good file with its dtools header changed in place by `change`."""
    header, data = split(good)
    meta = dtools_meta(header)
    change(meta)
    header["__metadata__"]["dtools"] = json.dumps(meta)
    return assemble(header, data)


def with_layout(good: Path, change: Callable[[dict, bytes], tuple[dict, bytes]]) -> bytes:
    header, data = split(good)
    return assemble(*change(header, data))


def _tensors(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def _overlap(h: dict, d: bytes) -> tuple[dict, bytes]:
    second = h[_tensors(h)[1]]
    second["data_offsets"] = [second["data_offsets"][0] - 4, second["data_offsets"][1] - 4]
    return h, d


def _outside(h: dict, d: bytes) -> tuple[dict, bytes]:
    last = h[_tensors(h)[-1]]
    last["data_offsets"][1] += 1 << 40
    return h, d


def _shape(h: dict, d: bytes) -> tuple[dict, bytes]:
    h[_tensors(h)[0]]["shape"] = [1 << 20, 1 << 20]
    return h, d


def _dtype(h: dict, d: bytes) -> tuple[dict, bytes]:
    h[_tensors(h)[0]]["dtype"] = "F128"
    return h, d


def _set(path: tuple[str, ...], value) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        target = meta
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    return change


def _wider(meta: dict) -> None:
    meta["model"]["base_channels"] = 16  # the tensors are of 8 base channels


# kind -> bytes of the file, from a good checkpoint (or train state: the same crafting applies)
LAYOUT: dict[str, Callable[[Path], bytes]] = {
    "empty": lambda g: b"",
    "header_length_huge": lambda g: struct.pack("<Q", 1 << 62) + g.read_bytes()[8:],
    "header_length_past_end": lambda g: struct.pack("<Q", g.stat().st_size) + g.read_bytes()[8:],
    "header_length_over_16mib": lambda g: assemble(b"{" + b" " * (17 << 20) + b"}", b""),
    "header_not_json": lambda g: assemble(b"\xff\xfe not json", b""),
    "header_deeply_nested": lambda g: assemble(b"[" * 200_000 + b"]" * 200_000, b""),
    "header_a_list": lambda g: assemble(b"[1, 2, 3]", b""),
    "truncated": lambda g: g.read_bytes()[:-100],
    "extra_bytes": lambda g: g.read_bytes() + b"\0" * 64,
    "offsets_overlap": lambda g: with_layout(g, _overlap),
    "offsets_outside": lambda g: with_layout(g, _outside),
    "shape_beyond_bytes": lambda g: with_layout(g, _shape),
    "unknown_dtype": lambda g: with_layout(g, _dtype),
    "metadata_not_strings": lambda g: with_layout(
        g, lambda h, d: ({**h, "__metadata__": {"dtools": [1]}}, d)),
    "dtools_header_a_list": lambda g: with_layout(
        g, lambda h, d: ({**h, "__metadata__": {"dtools": "[1, 2]"}}, d)),
    "dtools_header_nested": lambda g: with_layout(
        g, lambda h, d: ({**h, "__metadata__": {"dtools": "[" * 100_000 + "]" * 100_000}}, d)),
}
HEADER: dict[str, Callable[[dict], None]] = {
    "format_version_a_list": _set(("format_version",), [1]),
    "model_type_a_list": _set(("model_type",), ["unet"]),
    "model_type_unknown": _set(("model_type",), "transformer"),
    "model_a_string": _set(("model",), "big"),
    "num_classes_a_string": _set(("model", "num_classes"), "3"),
    "res_blocks_1e6": _set(("model", "num_res_blocks"), 10**6),
    "channels_1e6": _set(("model", "base_channels"), 10**6),
    "image_1e6_px": _set(("model", "image_size"), 10**6),
    "levels_1e3": _set(("model", "channel_mult"), [1] * 1000),
    "weights_misfit": _wider,
    "betas_nan": _set(("betas",), [0.1, math.nan, 0.2]),
    "betas_inf": _set(("betas",), [0.1, math.inf]),
    "betas_one_step": _set(("betas",), [0.1]),
    "betas_strings": _set(("betas",), ["0.1", "0.2"]),
    "betas_200k_steps": _set(("betas",), [1e-4] * 200_000),
    "alpha_bar_underflows": _set(("betas",), [0.9] * 400),
    "alpha_bar_stuck": _set(("betas",), [1e-17, 1e-17, 0.5]),
    "parameterization_a_list": _set(("parameterization",), ["eps"]),
    "step_a_string": _set(("step",), "7"),
    "elapsed_a_list": _set(("elapsed",), [1]),
    "train_not_object": _set(("train",), [1]),
    "train_min_snr_a_string": _set(("train", "min_snr_gamma"), "big"),
    "train_preset_a_list": _set(("train", "preset"), ["cpu32"]),
    "weights_names_numbers": _set(("weights",), [1, 2]),
    "condition_kind_a_list": _set(("condition",), {"kind": ["class"], "classes": ["a"]}),
}
KINDS = [*LAYOUT, *HEADER]


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, Path]:
    """A good tiny checkpoint, 8x8 images, a tiny image folder, and a folder for the crafted files."""
    root = tmp_path_factory.mktemp("hostile")
    good = make_checkpoint(root / "good.safetensors", train={"lr": 1e-3, "min_snr_gamma": 5.0})
    make_tiny_pngs(root / "data", 4)
    np.save(root / "in.npy", np.full((2, 8, 8, 3), 128, np.uint8))
    return {"root": root, "good": good, "data": root / "data", "in": root / "in.npy"}


def craft(place: dict[str, Path], kind: str, good: Path | None = None, name: str = "") -> Path:
    good = good or place["good"]
    out = place["root"] / f"{name or kind}.safetensors"
    out.write_bytes(LAYOUT[kind](good) if kind in LAYOUT else with_meta(good, HEADER[kind]))
    return out


# the command lines of every command that reads a model checkpoint; {ckpt} is the crafted file
COMMANDS: dict[str, list[str]] = {
    "sample": ["sample", "{ckpt}", "-n", "1", "-o", "{root}/s.npy"],
    "sample_guide": ["sample", "{good}", "--guide", "{ckpt}", "--guidance", "1", "-n", "1", "-o",
                     "{root}/g.npy"],
    "info": ["info", "{ckpt}"],
    "export": ["export", "{ckpt}", "-o", "{root}/exported"],
    "sweep": ["sweep", "{ckpt}", "{data}", "--samplers", "ddim:4", "-n", "2", "-o", "{root}/sweep"],
    "edit": ["edit", "{ckpt}", "{in}", "--strength", "0.5", "-o", "{root}/e.npy"],
    "invert": ["invert", "{ckpt}", "{in}", "-o", "{root}/i.npy"],
    "interpolate": ["interpolate", "{ckpt}", "--seeds", "1,2", "-o", "{root}/p.npy"],
    "train_init_from": ["train", "{data}", "-o", "{root}/ft", "--init-from", "{ckpt}", "--max-steps", "1"],
}


def refused(args: list[str], culprit: Path) -> float:
    """Run `args` in process; assert exit 1 with one `Error:` line naming `culprit`, no traceback; the
    seconds it took."""
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - t0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, (result.exit_code, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and culprit.name in lines[0], lines[0]
    assert len(lines[0]) < 400, lines[0]
    assert seconds < SECONDS, (args, seconds)
    return seconds


@pytest.mark.parametrize("kind", KINDS)
def test_every_reader_refuses_a_hostile_checkpoint(place, kind):
    ckpt = craft(place, kind)
    for line in COMMANDS.values():
        args = [a.format(ckpt=ckpt, **{k: str(v) for k, v in place.items()}) for a in line]
        refused(args, ckpt)


def test_the_good_checkpoint_is_read(place):
    """The crafted files are refused for what was changed: the file they come from works everywhere."""
    result = CliRunner().invoke(app, ["info", str(place["good"])])
    assert result.exit_code == 0, result.stderr
    result = CliRunner().invoke(app, ["sample", str(place["good"]), "-n", "1", "--steps", "2", "-s", "ddim",
                                      "-o", str(place["root"] / "ok.npy")])
    assert result.exit_code == 0, result.stderr


# ----------------------------------------------------------------------------- training states
def make_state(path: Path) -> Path:
    from dtools.schedules import make_schedule

    meta = {"format": "dtools.train-state", "step": 3, "ema_updates": 3, "elapsed": 1.5,
            "train": {"lr": 1e-3}, "model": {"image_size": 8, "base_channels": 8, "channel_mult": [1, 2],
                                             "attention_resolutions": [4], "num_heads": 1, "norm_groups": 4},
            "parameterization": "eps", "betas": make_schedule("cosine", 10).tolist(),
            "data": {"n": 4, "seed": 0, "epoch": 0, "pos": 0}}
    tensors = {"rng.torch": torch.zeros(8, dtype=torch.uint8), "raw.w": torch.zeros(3)}
    save_tensors(path, tensors, meta, force=True)
    return path


# a state's header has no "weights", "condition" or checked "train" fields; its weights are checked on restore
MODEL_ONLY = ("weights_misfit", "train_min_snr_a_string", "train_preset_a_list", "weights_names_numbers",
              "condition_kind_a_list")
STATE_KINDS = [k for k in KINDS if k not in MODEL_ONLY]


@pytest.mark.parametrize("kind", STATE_KINDS)
def test_resume_refuses_a_hostile_training_state(place, kind):
    from dtools.train.state import read_state_header

    good = make_state(place["root"] / "good-state.safetensors")
    assert read_state_header(good)["step"] == 3  # the good state passes every check of the header
    run = place["root"] / f"run-{kind}"
    run.mkdir(exist_ok=True)
    state = run / "train-state.safetensors"
    state.write_bytes(craft(place, kind, good, f"state-{kind}").read_bytes())
    refused(["train", "--resume", "-o", str(run)], state)
    refused(["info", str(state)], state)


# ----------------------------------------------------------------------------- FID statistics
def make_stats(path: Path) -> Path:
    """A small statistics file (the crafted damage is found before mu's and sigma's shapes are looked at)."""
    tensors = {"mu": torch.zeros(4, dtype=torch.float64), "sigma": torch.eye(4, dtype=torch.float64)}
    save_tensors(path, tensors,
                 {"format": "dtools.fid-stats", "images": 10, "source": "x", "weights_sha256": "0" * 64},
                 force=True)
    return path


@pytest.mark.parametrize("kind", [*LAYOUT, "format_version_a_list"])
def test_fid_and_info_refuse_hostile_statistics(place, kind):
    good = make_stats(place["root"] / "good-stats.safetensors")
    stats = craft(place, kind, good, f"stats-{kind}")
    for args in (["fid", str(stats), str(place["data"])], ["info", str(stats)]):
        refused(args, stats)
        # refused for the crafted damage, not for the small mu and sigma of the file it was made from
        assert "mu/sigma have shapes" not in CliRunner().invoke(app, args).stderr
