"""dtools.fileio: atomic writes, --force, `.npy` on files and pipes, and the refusals."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest

from dtools import fileio
from dtools.errors import DtoolsError
from dtools.fileio import (
    atomic_folder,
    atomic_open,
    atomic_save,
    atomic_write_bytes,
    check_writable,
    npy_bytes,
    parse_npy,
    read_npy,
    write_npy,
)


class FakeStream:
    """Stands in for sys.stdin / sys.stdout: a binary `.buffer` and a chosen `isatty()`."""

    def __init__(self, data: bytes = b"", tty: bool = False):
        self.buffer = io.BytesIO(data)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------- atomic writes
def test_atomic_open_success_replaces(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_open(target, force=True) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # nothing visible until the rename
    assert target.read_bytes() == b"new"
    assert leftovers(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_atomic_open_failure_keeps_old_file_and_no_temp(tmp_path, exc):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)), atomic_open(target, force=True) as f:
        f.write(b"half of the new")
        raise exc
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == ["out.bin"]


def test_atomic_open_failure_creates_nothing(tmp_path):
    with pytest.raises(OSError), atomic_open(tmp_path / "new.bin") as f:
        f.write(b"x")
        raise OSError(28, "No space left on device")
    assert leftovers(tmp_path) == []


def test_atomic_save_writer_gets_a_name_with_the_suffix(tmp_path):
    seen = []

    def writer(name: str) -> None:
        seen.append(name)
        with open(name, "wb") as f:
            f.write(b"png bytes")

    atomic_save(tmp_path / "plot.png", writer)
    assert (tmp_path / "plot.png").read_bytes() == b"png bytes"
    assert seen[0].endswith(".png")
    assert os.path.dirname(seen[0]) == str(tmp_path)  # the same folder, so the rename is atomic
    assert leftovers(tmp_path) == ["plot.png"]


def test_atomic_save_writer_that_raises(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")

    def writer(name: str) -> None:
        with open(name, "wb") as f:
            f.write(b"partial")
        raise ValueError("matplotlib broke")

    with pytest.raises(ValueError):
        atomic_save(target, writer, force=True)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == ["plot.png"]


def test_atomic_write_creates_parent_folders(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "b" / "c.bin", b"abc")
    assert (tmp_path / "a" / "b" / "c.bin").read_bytes() == b"abc"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_written_files_get_normal_permissions(tmp_path):
    """Not the temp file's 0o600: a new file gets 0o666 minus the umask, a replaced one keeps its mode."""
    expected = 0o666 & ~current_umask()
    atomic_write_bytes(tmp_path / "a.bin", b"a")
    atomic_save(tmp_path / "b.png", lambda name: open(name, "wb").close())
    write_npy(np.zeros(2), tmp_path / "c.npy")
    for name in ("a.bin", "b.png", "c.npy"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert fileio.default_mode() == expected
    assert fileio.default_mode(directory=True) == 0o777 & ~current_umask()
    os.chmod(tmp_path / "a.bin", 0o640)
    atomic_write_bytes(tmp_path / "a.bin", b"b", force=True)
    os.chmod(tmp_path / "b.png", 0o604)
    atomic_save(tmp_path / "b.png", lambda name: open(name, "wb").close(), force=True)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.png").stat().st_mode) == 0o604


# ---------------------------------------------------------------------------------------- --force
def test_no_overwrite_without_force(tmp_path):
    target = tmp_path / "beta.npy"
    target.write_bytes(b"precious")
    for write in (
        lambda: atomic_write_bytes(target, b"new"),
        lambda: atomic_save(target, lambda name: open(name, "wb").close()),
        lambda: write_npy(np.zeros(3), target),
    ):
        with pytest.raises(DtoolsError, match="already exists; pass --force"):
            write()
    assert target.read_bytes() == b"precious"
    assert leftovers(tmp_path) == ["beta.npy"]
    write_npy(np.arange(3.0), target, force=True)
    np.testing.assert_array_equal(np.load(target), [0.0, 1.0, 2.0])


@pytest.mark.parametrize("force", [False, True])
def test_directory_target_refused(tmp_path, force):
    (tmp_path / "d").mkdir()
    with pytest.raises(DtoolsError, match="is a directory"):
        check_writable(tmp_path / "d", force)


# ---------------------------------------------------------------------------------------- .npy
def test_npy_round_trip_file(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1)
    write_npy(arr, tmp_path / "x.npy")
    out = read_npy(tmp_path / "x.npy")
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4, 1)
    np.testing.assert_array_equal(out, arr)
    # float64 is bit-exact
    b = np.linspace(1e-4, 0.02, 7)
    assert read_npy_bytes(npy_bytes(b)).tobytes() == b.tobytes()


def read_npy_bytes(data: bytes) -> np.ndarray:
    return parse_npy(data, "test")


def test_non_contiguous_arrays_are_written_plainly():
    arr = np.arange(12.0).reshape(3, 4).T
    np.testing.assert_array_equal(read_npy_bytes(npy_bytes(arr)), arr)


@pytest.mark.parametrize("path", ["-", None])
def test_read_npy_from_stdin(monkeypatch, path):
    arr = np.linspace(0.1, 0.2, 5)
    monkeypatch.setattr("sys.stdin", FakeStream(npy_bytes(arr)))
    np.testing.assert_array_equal(read_npy(path), arr)


def test_read_npy_stdin_terminal_refused(monkeypatch):
    monkeypatch.setattr("sys.stdin", FakeStream(tty=True))
    with pytest.raises(DtoolsError, match="stdin is a terminal"):
        read_npy("-")
    monkeypatch.setattr("sys.stdin", None)
    with pytest.raises(DtoolsError, match="stdin"):
        read_npy("-")


def pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros(3))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty input"),
        (pickled_npy(), "pickle"),
        (npz_bytes(), "npz"),
        (b"\x89PNG\r\n\x1a\n not an array", "not a .npy file"),
        (b"hello world", "not a .npy file"),
        (b"\x93NUMPY\x01\x00garbage header", "not a valid .npy"),
        (npy_bytes(np.zeros(1000))[:200], "not a valid .npy"),  # truncated data
    ],
)
def test_bad_npy_rejected(tmp_path, monkeypatch, data, match):
    with pytest.raises(DtoolsError, match=match):
        parse_npy(data, "x.npy")
    (tmp_path / "x.npy").write_bytes(data)
    with pytest.raises(DtoolsError, match=match):
        read_npy(tmp_path / "x.npy")
    monkeypatch.setattr("sys.stdin", FakeStream(data))
    with pytest.raises(DtoolsError, match=f"stdin: .*{match}"):
        read_npy("-")


def test_read_npy_missing_and_directory(tmp_path):
    with pytest.raises(DtoolsError, match="no such file"):
        read_npy(tmp_path / "nope.npy")
    with pytest.raises(DtoolsError, match="is a directory"):
        read_npy(tmp_path)


# ---------------------------------------------------------------------------------------- stdout
def test_write_npy_to_a_pipe(monkeypatch):
    out = FakeStream()
    monkeypatch.setattr("sys.stdout", out)
    write_npy(np.arange(4, dtype=np.float64), "-")
    np.testing.assert_array_equal(np.load(io.BytesIO(out.buffer.getvalue())), [0, 1, 2, 3])


@pytest.mark.parametrize("path", ["-", None])
def test_write_npy_refuses_a_terminal(monkeypatch, path):
    out = FakeStream(tty=True)
    monkeypatch.setattr("sys.stdout", out)
    with pytest.raises(DtoolsError, match=r"refusing to write binary .* terminal.*-o FILE"):
        write_npy(np.zeros(3), path)
    assert out.buffer.getvalue() == b""
    assert fileio.stdout_is_terminal()


def test_atomic_folder_swaps_whole_folders_and_keeps_foreign_files(tmp_path):
    out, ours = tmp_path / "out", (lambda rel: rel.as_posix() in ("a.txt", "sub/b.txt"))
    with atomic_folder(out, False, ours, "test") as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("1")
    with pytest.raises(DtoolsError, match="already exists and is not empty; pass --force"):
        with atomic_folder(out, False, ours, "test"):
            pass
    with pytest.raises(RuntimeError), atomic_folder(out, True, ours, "test") as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert (out / "a.txt").read_text() == "1" and (out / "sub" / "b.txt").exists()  # the old one, whole
    with atomic_folder(out, True, ours, "test") as tmp:
        (tmp / "a.txt").write_text("2")
    assert [p.name for p in out.rglob("*")] == ["a.txt"] and (out / "a.txt").read_text() == "2"
    (out / "mine.txt").write_text("keep")
    with pytest.raises(DtoolsError, match="holds files test did not write \\(e.g. mine.txt\\)"):
        with atomic_folder(out, True, ours, "test"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folders left
