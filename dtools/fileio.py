"""Plain-file plumbing shared by every command: atomic writes, `.npy` on pipes, stdin/stdout, and
schedules read from a name or a `.npy` file.

Contracts (docs/formats.md):
- `-` or an omitted path means stdin/stdout.
- `.npy` is read with ``allow_pickle=False`` after the whole stream is in memory (np.load seeks).
- Binary data is never written to a terminal.
- Every file is written to a temporary name beside its target, flushed, fsynced, then renamed
  over it, so a crash or a full disk never leaves a half-written file under the real name. Temp
  names carry the writer's pid (`.model.4242.k3j9x1ab.tmp.safetensors`): a temp of a process that
  died (SIGKILL) is hidden, and `sweep_temps` removes it once that pid is gone.
- An existing file is replaced only with ``force=True``.
- Written files get the usual permissions (0o666 minus the umask; a replaced file keeps its mode),
  not the private 0o600 of the temp file.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dtools.errors import DtoolsError

STDIO = "-"


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """The hex digest of a file's bytes (hashlib's `algorithm`, e.g. "sha256"), read in blocks."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def is_stdio(path: str | os.PathLike | None) -> bool:
    return path is None or str(path) == STDIO


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to clobber an existing file without --force; make sure the folder exists."""
    p = Path(path)
    if p.is_dir():  # first: --force cannot help here
        raise DtoolsError(f"{p} is a directory, expected a file path")
    if p.exists() and not force:
        raise DtoolsError(f"{p} already exists; pass --force to overwrite it")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def default_mode(directory: bool = False) -> int:
    """The permissions a plain open()/mkdir() would give: 0o666 (0o777 for folders) minus the umask.

    Temp files and folders from `tempfile` are private (0o600/0o700); whatever is renamed into place
    gets this mode instead, so outputs are as readable as any other file the user writes.
    """
    return (0o777 if directory else 0o666) & ~_umask()


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it; set it straight back
    os.umask(mask)
    return mask


def _final_mode(p: Path) -> int:
    """The replaced file's own mode (as an in-place overwrite keeps it), else the umask default."""
    try:
        return stat.S_IMODE(p.stat().st_mode)
    except OSError:
        return default_mode()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[str]:
    """The one atomic-write core: a temp file name beside ``path`` that replaces it when the block ends
    without an exception (after fsync, with the final file's mode); on any exception it is removed.

    The temp name keeps the target's suffix, so libraries that sniff the format (PIL, matplotlib,
    safetensors) write the right one.
    """
    p = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(p.stem), suffix=f".tmp{p.suffix}", dir=p.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _final_mode(p))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, force: bool = False) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing through a temp file that is renamed into place on success."""
    with atomic_path(path, force) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> None:
    with atomic_open(path, force) as f:
        f.write(data)


def atomic_save(path: str | os.PathLike, writer: Callable[[str], None], force: bool = False) -> None:
    """Atomic write for libraries that insist on a file name (PIL, matplotlib, safetensors):
    ``writer(tmp_name)`` writes the file."""
    with atomic_path(path, force) as tmp:
        writer(tmp)


def temp_prefix(name: str) -> str:
    """The start of a temp file or folder name beside `name`: hidden, and tagged with this process's pid
    (`sweep_temps` reads it back); tempfile adds 8 random characters, then comes the `.tmp` suffix."""
    return f".{name}.{os.getpid()}."


_TEMP = re.compile(r"^\..*\.(\d+)\.[a-z0-9_]{8}\.(tmp|old)")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_temps(folder: str | os.PathLike) -> int:
    """Remove the temp files and folders in `folder` (`temp_prefix`) of processes that are gone (killed
    mid-write); a live writer's are left alone. Returns how many went."""
    gone = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for e in entries:
        m = _TEMP.match(e.name)
        if m is None or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e)
            else:
                e.unlink()
            gone += 1
    return gone


def replace_folder(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `path` (beside it): `path` is either the old folder or the whole
    new one, never a mix. An old non-empty folder is first moved aside, then deleted."""
    tmp, p = Path(tmp), Path(path)
    if p.exists() and any(p.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(p.name), suffix=".old", dir=p.parent))
        os.replace(p, old / "x")
        os.replace(tmp, p)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, p)  # rename(2) replaces an empty folder


def check_folder_writable(
    path: str | os.PathLike, force: bool, ours: Callable[[Path], bool], what: str
) -> Path:
    """A folder output may be new or empty; a non-empty one needs --force and must hold only files that
    `ours(relative path)` accepts (`what` wrote them): dtools never deletes files it did not write."""
    p = Path(path)
    if not p.exists():
        return p
    if not p.is_dir():
        raise DtoolsError(f"{p} exists and is not a folder")
    if not any(p.iterdir()):
        return p
    if not force:
        raise DtoolsError(f"{p} already exists and is not empty; pass --force to replace it")
    files = sorted(e.relative_to(p) for e in p.rglob("*") if not e.is_dir())
    foreign = next((e for e in files if not ours(e)), None)
    if foreign is not None:
        raise DtoolsError(f"{p} holds files {what} did not write (e.g. {foreign}); --force only replaces "
                          f"an earlier {what} output: choose an empty or new folder")
    return p


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike, force: bool, ours: Callable[[Path], bool], what: str
) -> Iterator[Path]:
    """A temp folder beside `path` to write a whole output folder into; when the block ends without an
    exception it replaces `path` (see `replace_folder`), on any exception it is removed. The checks of
    `check_folder_writable` run before and again just before the swap."""
    p = check_folder_writable(path, force, ours, what)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(p.name), suffix=".tmp", dir=p.parent))
    os.chmod(tmp, default_mode(directory=True))  # mkdtemp's folder is private (0o700)
    try:
        yield tmp
        check_folder_writable(p, force, ours, what)  # again: something may have appeared meanwhile
        replace_folder(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def parse_npy(data: bytes, name: str) -> np.ndarray:
    if not data:
        raise DtoolsError(f"{name}: empty input, expected a .npy array")
    if data[:2] == b"PK":
        raise DtoolsError(f"{name}: an .npz archive; dtools reads single .npy arrays")
    if not data.startswith(b"\x93NUMPY"):
        raise DtoolsError(f"{name}: not a .npy file (no NUMPY magic bytes)")
    declared = _declared_bytes(data)
    if declared is not None and declared[0] > declared[1]:
        raise DtoolsError(f"{name}: not a valid .npy array (truncated: its header declares {declared[2]}, "
                          f"{declared[0]} bytes; {declared[1]} follow it)")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            msg = f"{name}: holds Python objects (pickle); dtools only reads plain arrays"
            raise DtoolsError(msg) from None
        raise DtoolsError(f"{name}: not a valid .npy array ({e})") from None
    except Exception as e:  # numpy raises a zoo of types for garbage headers
        raise DtoolsError(f"{name}: not a valid .npy array ({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):
        raise DtoolsError(f"{name}: expected a single .npy array, got an .npz archive")
    return arr


def _declared_bytes(data: bytes) -> tuple[int, int, str] | None:
    """(bytes the .npy header declares, bytes after the header, "shape dtype") from the header alone, so
    that a crafted header declaring a huge array is refused before numpy allocates it; None when the
    header cannot be read here (np.load then says why)."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, _, dtype = reader[version](f)
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        return declared, len(data) - f.tell(), f"{list(shape)} {dtype}"
    except Exception:  # noqa: BLE001 (numpy raises a zoo of types for garbage headers)
        return None


def read_npy(path: str | os.PathLike | None) -> np.ndarray:
    """Read one array from a `.npy` file or, for ``-``/None, all of stdin."""
    if is_stdio(path):
        if sys.stdin is None or sys.stdin.isatty():
            raise DtoolsError(
                "expected a .npy array on stdin, but stdin is a terminal; pipe one in or give a path"
            )
        return parse_npy(sys.stdin.buffer.read(), "stdin")
    p = Path(path)
    if not p.exists():
        raise DtoolsError(f"{p}: no such file")
    if p.is_dir():
        raise DtoolsError(f"{p}: is a directory, expected a .npy file")
    return parse_npy(p.read_bytes(), str(p))


def stdout_is_terminal() -> bool:
    return sys.stdout is None or sys.stdout.isatty()


def refuse_terminal(path: str | os.PathLike | None, message: str) -> None:
    """Raise DtoolsError(message) when `path` means stdout and stdout is a terminal.

    Commands call it (or `check_output`) before their slow work, with a hint that fits them.
    """
    if is_stdio(path) and stdout_is_terminal():
        raise DtoolsError(message)


def check_output(path: str | os.PathLike | None, force: bool, terminal_message: str) -> None:
    """Refuse early what writing to `path` would refuse late: a terminal for `-`, else an existing file
    without --force."""
    if is_stdio(path):
        refuse_terminal(path, terminal_message)
    else:
        check_writable(path, force)


def write_bytes(data: bytes, path: str | os.PathLike | None, force: bool = False) -> None:
    """`data` to stdout for ``-``/None (refuse a terminal first), else to ``path`` atomically."""
    if is_stdio(path):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        atomic_write_bytes(path, data, force)


NPY_TO_TERMINAL = (
    "refusing to write binary .npy data to a terminal; redirect stdout "
    "(`> file.npy`, `| dtools grid -o out.png`) or pass -o FILE"
)


def write_npy(arr: np.ndarray, path: str | os.PathLike | None, force: bool = False) -> None:
    """Write ``arr`` as `.npy` to ``path`` atomically, or to stdout for ``-``/None (never a terminal)."""
    refuse_terminal(path, NPY_TO_TERMINAL)
    write_bytes(npy_bytes(arr), path, force)
