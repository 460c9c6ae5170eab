"""The `dtools` root: command list and order, --version, help conventions, how errors and signals end
(one `Error:` line and exit 1, usage errors exit 2, Ctrl-C exit 130, a closed pipe quietly)."""

from __future__ import annotations

import errno
import importlib
import os
import re
import subprocess
import sys

import pytest

from dtools import __version__
from dtools.cli import app
from dtools.errors import DtoolsError

PIPELINE = [
    "prep", "schedule", "noise", "train", "ema", "sample", "edit", "invert", "interpolate", "grid", "fid",
    "sweep", "nn", "pack", "export", "import", "info",
]


def listed_commands(help_text: str) -> list[str]:
    section = help_text.split("Commands:", 1)[1]
    return [m.group(1) for m in re.finditer(r"^  (\S+)\s", section, re.MULTILINE)]


def test_help_lists_every_command_in_pipeline_order(runner):
    for flag in ("--help", "-h"):
        res = runner.invoke(app, [flag])
        assert res.exit_code == 0
        assert res.stdout.startswith("Usage: dtools [OPTIONS] COMMAND [ARGS]...")
        assert listed_commands(res.stdout) == PIPELINE


def test_no_arguments_shows_the_help(runner):
    res = runner.invoke(app, [])
    assert res.exit_code in (0, 2)  # click >= 8.2 treats it as a usage error (2)
    assert listed_commands(res.stdout + res.stderr) == PIPELINE


def test_version(runner):
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout == f"dtools {__version__}\n"


@pytest.mark.parametrize("command", PIPELINE)
def test_every_command_help_has_a_summary_and_a_pipeline_example(runner, command):
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"Usage: dtools {command} ")
    summary = lines[2].strip()
    assert summary and "not yet implemented" not in summary.lower()
    examples = res.stdout.split("Examples:", 1)
    assert len(examples) == 2, f"`dtools {command} --help` has no Examples: block"
    example_lines = [ln.strip() for ln in examples[1].split("\n\n")[0].splitlines()]
    assert any(ln.startswith("dtools ") or ln.startswith("| dtools") for ln in example_lines)
    assert any("|" in ln or ">" in ln for ln in example_lines), "no pipeline example"


@pytest.mark.parametrize(
    "args",
    [["no-such-command"], ["schedule"], ["grid", "--nrow"], ["schedule", "linear", "-T"], ["--no-such-flag"]],
)
def test_usage_errors_exit_2(runner, args):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert "Error: " in res.stderr and res.stdout == ""


# ---------------------------------------------------------------------------------------- error edge
@pytest.mark.parametrize(
    ("exc", "code", "message"),
    [
        (DtoolsError("beta.npy: something is off"), 1, "Error: beta.npy: something is off\n"),
        (OSError(errno.ENOSPC, "No space left on device", "out.npy"), 1,
         "Error: no space left on device while writing out.npy\n"),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), 1, "Error: /x: Permission denied\n"),
        (MemoryError(), 1, "Error: out of memory; try a smaller --batch-size or fewer images\n"),
        (KeyboardInterrupt(), 130, "Error: interrupted\n"),
    ],
)
def test_exceptions_become_one_error_line(runner, monkeypatch, exc, code, message):
    def boom(*args, **kwargs):
        raise exc

    # `dtools.commands.schedule` the attribute is the command function; import the module itself
    monkeypatch.setattr(importlib.import_module("dtools.commands.schedule"), "load_schedule", boom)
    res = runner.invoke(app, ["schedule", "linear"])
    assert res.exit_code == code
    assert res.stderr == message and res.stdout == ""


def test_a_file_where_a_folder_should_be(runner, tmp_path):
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, ["schedule", "linear", "-o", str(tmp_path / "file" / "beta.npy")])
    assert res.exit_code == 1 and res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------- processes
def bash(cmd: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, timeout=60)


def test_closed_pipe_is_quiet(dtools_bin):
    """`| head` closes the pipe early (160 kB of betas > any pipe buffer): no traceback, nothing on stderr."""
    res = bash(f"set +o pipefail; '{dtools_bin}' schedule linear -T 20000 | head -c 10 >/dev/null")
    assert res.returncode == 0 and res.stderr == b""
    # without the SIGPIPE reset of `main()`, the BrokenPipeError handler keeps it quiet too
    res = bash(
        f"set -o pipefail; '{sys.executable}' -c 'from dtools.cli import app; app(prog_name=\"dtools\")' "
        "schedule linear -T 20000 | head -c 10 >/dev/null"
    )
    assert res.returncode == 0 and res.stderr == b""


def test_module_entry_point_and_lazy_torch():
    cmd = [sys.executable, "-m", "dtools", "--version"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == f"dtools {__version__}\n"
    # `dtools --help` stays fast: building the CLI imports no torch (command modules import it lazily)
    probe = "import sys, dtools.cli; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_console_without_unicode(dtools_bin, tmp_path):
    """β, ᾱ and box drawing on an ASCII-only console: replaced by '?', never a UnicodeEncodeError."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    res = subprocess.run([dtools_bin, "schedule", "linear", "-T", "10", "--summary"], capture_output=True,
                         env=env, timeout=60)
    assert res.returncode == 0 and res.stderr == b"", res.stderr
    assert b"linear" in res.stdout and b"? first" in res.stdout


def test_train_keeps_spinning_openmp_threads_and_every_other_command_sleeps():
    """train's thread guard handles busy cores (runtime.ThreadGuard); the other commands have none, so
    their OpenMP threads sleep while they wait."""
    from dtools.cli import omp_wait_policy

    assert omp_wait_policy(["train", "data.npy", "-o", "run"]) is None
    for argv in (["sample", "model.safetensors"], ["fid", "a", "b"], [], ["--version"]):
        assert omp_wait_policy(argv) == "PASSIVE", argv
