"""Class labels beside an image folder: `dataset.json`, the one plain format every command reads.

The file lies in the folder of the images it labels (`dtools prep` writes it for a source with one
sub-folder per class; `dtools sample -o` for the classes it was asked to draw). Its layout extends
EDM's `dataset.json` (whose readers look only at "labels"):

    {"format": "dtools-labels", "version": 1,
     "classes": ["cat", "dog"],                    # class index -> name
     "labels": [["000000.png", 0], ["000001.png", 1], ...]}   # file name (relative) -> class index

A folder without the file is unlabelled. A file that is not what this module writes, a label outside
`classes`, a file named twice, or an image of the folder without a label is a one-line DtoolsError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dtools.errors import DtoolsError
from dtools.fileio import atomic_write_bytes

LABELS_FILE = "dataset.json"
FORMAT = "dtools-labels"
VERSION = 1
MAX_BYTES = 64 * 2**20  # a labels file larger than this is not one dtools wrote for any real folder


@dataclass(frozen=True)
class Labels:
    """The classes of a labelled folder: `classes[i]` names class i; `of[name]` is a file's class."""

    classes: tuple[str, ...]
    of: dict[str, int]

    def __post_init__(self) -> None:
        check_classes(self.classes)
        n = len(self.classes)
        for name, c in self.of.items():
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < n:
                raise DtoolsError(f"{LABELS_FILE}: {name} has label {c!r}, not a class index in 0..{n - 1}")

    def for_files(self, files: Sequence[str | os.PathLike], root: str | os.PathLike) -> np.ndarray:
        """The class index of each of `files` (paths under `root`), int64 [N]; an error naming the first
        file without a label."""
        out = np.empty(len(files), dtype=np.int64)
        for i, f in enumerate(files):
            key = Path(f).relative_to(root).as_posix()
            if key not in self.of:
                raise DtoolsError(f"{Path(root) / LABELS_FILE} gives no label for {key}; rewrite it, or "
                                  f"delete it to use the folder unlabelled")
            out[i] = self.of[key]
        return out

    def counts(self) -> np.ndarray:
        """Images per class, int64 [len(classes)]."""
        return np.bincount(np.fromiter(self.of.values(), dtype=np.int64, count=len(self.of)),
                           minlength=len(self.classes))


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """Class names: at least one, strings, no two alike."""
    if not classes or not all(isinstance(c, str) and c for c in classes):
        raise DtoolsError(f"{LABELS_FILE}: classes must be a non-empty list of names, got {list(classes)!r}")
    if len(set(classes)) != len(classes):
        raise DtoolsError(f"{LABELS_FILE}: class names repeat: {list(classes)!r}")
    return tuple(classes)


def labels_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / LABELS_FILE


def read_labels(folder: str | os.PathLike) -> Labels | None:
    """The labels of an image folder, or None when it has no dataset.json (or is not a folder)."""
    path = labels_path(folder)
    if not Path(folder).is_dir() or not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DtoolsError(f"{path}: {path.stat().st_size} bytes is too large for a labels file")
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DtoolsError(f"{path}: not a readable labels file ({type(e).__name__})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("labels"), list):
        raise DtoolsError(f"{path}: not a dtools labels file (expected \"format\": \"{FORMAT}\" and a "
                          f"\"labels\" list); move it away to use the folder unlabelled")
    if d.get("version") != VERSION:
        raise DtoolsError(f"{path}: labels format version {d.get('version')!r}; this dtools reads {VERSION}")
    classes = d.get("classes")
    if not isinstance(classes, list):
        raise DtoolsError(f"{path}: \"classes\" must be a list of names")
    of: dict[str, int] = {}
    for entry in d["labels"]:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise DtoolsError(f"{path}: each label must be [file name, class index], got {entry!r}")
        name, c = entry
        if name in of:
            raise DtoolsError(f"{path}: {name} is labelled twice")
        of[name] = c
    return Labels(check_classes(classes), of)


def labels_json(files: Sequence[str], labels: Sequence[int], classes: Sequence[str]) -> bytes:
    """The dataset.json bytes for `files` (names relative to their folder) with class indices `labels`."""
    if len(files) != len(labels):
        raise DtoolsError(f"{len(files)} files but {len(labels)} labels")
    lab = Labels(check_classes(classes), {f: int(c) for f, c in zip(files, labels, strict=True)})
    d = {"format": FORMAT, "version": VERSION, "classes": list(lab.classes),
         "labels": [[f, int(c)] for f, c in zip(files, labels, strict=True)]}
    return (json.dumps(d, separators=(",", ":")) + "\n").encode()


def write_labels(folder: str | os.PathLike, files: Sequence[str], labels: Sequence[int],
                 classes: Sequence[str], force: bool = False) -> Path:
    """Write `folder`/dataset.json atomically; returns its path."""
    path = labels_path(folder)
    atomic_write_bytes(path, labels_json(files, labels, classes), force)
    return path


def parse_class(text: str, classes: Sequence[str]) -> int:
    """A class given on the command line, by name or by index, as its index; an error listing them."""
    if text in classes:
        return list(classes).index(text)
    try:
        i = int(text)
    except ValueError:
        i = -1
    if 0 <= i < len(classes):
        return i
    shown = ", ".join(f"{k}={c}" for k, c in enumerate(classes[:20])) + (" ..." if len(classes) > 20 else "")
    raise DtoolsError(f"no class {text!r} in this model; its classes are {shown}")
