"""The `dtools` command line: one Typer app, one sub-command per module in dtools.commands.

This is the edge where user-facing errors become one line on stderr:
- `DtoolsError` (anything the user can cause) and `OSError` (missing file, full disk, permission)
  print ``Error: <message>`` and exit 1;
- usage errors (unknown option, bad value) keep Click's exit 2;
- Ctrl-C prints ``Error: interrupted`` and exits 130;
- SIGPIPE is reset to its default so `dtools ... | head` ends quietly;
- text that the console cannot encode is replaced, not a UnicodeEncodeError.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys

import click
import typer
from typer.core import TyperGroup

from dtools import __version__
from dtools.errors import DtoolsError, OptionError


def _error(message: str, code: int = 1) -> None:
    message = " ".join(message.split("\n"))  # one line, even when a file's text found its way into it
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _os_error_message(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return f"no space left on device{f' while writing {e.filename}' if e.filename else ''}"
    if e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e) or type(e).__name__


class DtoolsGroup(TyperGroup):
    """Runs a sub-command and converts user-facing exceptions into `Error: ...` lines."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # keep the pipeline order, not alphabetical

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DtoolsError as e:
            _error(str(e))
        except BrokenPipeError:
            # Downstream closed the pipe (`| head`): not our error, and nothing to report.
            try:
                sys.stdout = None  # type: ignore[assignment]
            finally:
                sys.exit(0)
        except OSError as e:
            _error(_os_error_message(e))
        except MemoryError:
            _error("out of memory; try a smaller --batch-size or fewer images")
        except KeyboardInterrupt:
            _error("interrupted", 130)


app = typer.Typer(
    cls=DtoolsGroup,
    name="dtools",
    help=(
        "Train, sample and evaluate denoising diffusion image models with plain shell commands.\n\n"
        "Pipeline: dtools prep twemoji data/ --size 32 ; dtools schedule cosine -T 1000 > beta.npy ; "
        "dtools train data/ --beta beta.npy -o runs/emoji ; "
        "dtools sample runs/emoji/model.safetensors | dtools grid -o samples.png"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dtools {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    pass


def _usage_errors(fn):
    """Inside the command's own context, a bad option value found by core validation (OptionError)
    becomes Click's usage error: exit 2 with the command's usage line, as for values Click refuses."""

    @functools.wraps(fn)
    def command(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except OptionError as e:
            raise typer.BadParameter(e.message, param_hint=e.option) from None

    return command


def _register() -> None:
    # Imported here so that `dtools.cli` is the only module that knows every command.
    from dtools.commands import COMMANDS
    from dtools.commands.options import DtoolsCommand

    for name, fn in COMMANDS.items():
        app.command(name, cls=DtoolsCommand)(_usage_errors(fn))


_register()


def click_command() -> click.Command:
    """The Click command behind `app` (for dtools.docgen, which renders every --help)."""
    return typer.main.get_command(app)


def main() -> None:
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # β, ᾱ and table borders on a console that cannot encode them (cp1252, PYTHONIOENCODING=ascii)
    # become '?' instead of a UnicodeEncodeError traceback
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    policy = omp_wait_policy(sys.argv[1:])
    if policy is not None:
        os.environ.setdefault("OMP_WAIT_POLICY", policy)
    app(prog_name="dtools")


def omp_wait_policy(argv: list[str]) -> str | None:
    """The OpenMP wait policy a command line gets unless OMP_WAIT_POLICY is set (OpenMP reads it once,
    when torch loads, which commands do lazily). Sleeping threads (PASSIVE) for every command but
    train: with another process on the cores, spinning threads made training 25x slower (2.8 vs 73
    img/s on 2 cores, docs/train.md). `dtools train` keeps OpenMP's spinning default (None), 1.5x
    faster on idle cores, because its loop's thread guard (runtime.ThreadGuard) drops to one thread
    when the cores get busy (docs/performance.md)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return None if command == "train" else "PASSIVE"
