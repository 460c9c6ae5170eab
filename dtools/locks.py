"""One writer per output folder: an advisory lock on FOLDER/.dtools.lock.

`dtools train -o RUN` (rank 0 of several processes) and `dtools sample/edit/interpolate -o DIR` hold
it while they write. A second writer is refused at once in one line naming the folder and the pid that
holds it. The lock is `fcntl.flock` on an open file, so the kernel drops it when its process dies, even
by SIGKILL: a crash leaves at most a stale, unlocked .dtools.lock file, never a stuck folder. The file
is removed when the lock is released; a process that opened it just before checks, once it holds the
lock, that the name still leads to the file it locked, and starts over if not.

Where `fcntl` does not exist (Windows) folders are not locked.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dtools.errors import DtoolsError
from dtools.fileio import default_mode

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows)
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".dtools.lock"


class FolderLock:
    """The held lock of one folder; `release()` (or the process's end) lets it go."""

    def __init__(self, folder: Path, fd: int | None, created: bool):
        self.folder, self.fd, self.created = folder, fd, created

    def release(self) -> None:
        """Remove the lock file and unlock; a folder this lock created and that stayed empty goes too."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.folder / LOCK_FILE)
        os.close(self.fd)  # closing the last descriptor drops the flock
        self.fd = None
        if self.created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only when empty

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(folder: str | os.PathLike) -> str | None:
    """The pid written in FOLDER's lock file (its holder's, if it is still held), or None."""
    try:
        text = (Path(folder) / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return text if text.isdigit() else None


def acquire(folder: str | os.PathLike) -> FolderLock:
    """Lock `folder` (created when missing), or raise DtoolsError naming the folder when another live
    process holds it."""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise DtoolsError(f"{p} exists and is not a folder")
    created = not p.exists()
    p.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        return FolderLock(p, None, created)
    path = p / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, default_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = holder(p)
            by = f" (pid {pid})" if pid else ""
            raise DtoolsError(f"{p}: another dtools process{by} is writing to this folder now; wait for it "
                              "to end, or choose another folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder removed the file as we opened it: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return FolderLock(p, fd, created)


@contextlib.contextmanager
def hold(folder: str | os.PathLike) -> Iterator[FolderLock]:
    """`acquire` for the length of a block."""
    lock = acquire(folder)
    try:
        yield lock
    finally:
        lock.release()
