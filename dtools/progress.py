"""Progress on stderr for every long job: the one place that builds rich progress bars and spinners.

A bar is drawn only when stderr is a terminal (or when `show` says so), so pipes and logs stay clean.
`log` is how jobs write their lines to stderr; while a bar is live, rich moves them above it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

DAY = 86_400.0


def duration(seconds: float) -> str:
    """'45s', '7m05s', '3h12m', '9.1 days': a time to come, or an estimate."""
    s = max(0.0, seconds)
    if s >= 2 * DAY:
        return f"{s / DAY:.1f} days"
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    if s >= 60:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"


def fmt_time(s: float) -> str:
    """'7m05s', '3h12m05s': a time spent, to the second."""
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def stderr_console() -> Console:
    return Console(stderr=True)


def log(line: str) -> None:
    """One plain line on stderr (above a live progress bar, if one is drawn)."""
    print(line, file=sys.stderr, flush=True)


class Bar:
    """One task of a live progress display: `advance` it, `update` its fields."""

    def __init__(self, progress: Progress, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, completed: int | None = None, **fields: str) -> None:
        self._progress.update(self._task, completed=completed, **fields)


@contextlib.contextmanager
def progress_bar(
    description: str,
    total: int,
    *,
    completed: int = 0,
    fields: dict[str, str] | None = None,
    columns: Sequence[str] = (),
    count: bool = True,
    elapsed: bool = False,
    transient: bool = True,
    show: bool | None = None,
    remaining: str | None = None,
) -> Iterator[Bar]:
    """A bar for `total` units of work: `description`, the bar, [N/M], `columns`, [elapsed], time left.

    `description` and `columns` are rich format strings ('{task.completed}', '{task.fields[loss]}');
    `fields` gives the initial values of the fields they name. `show` forces the bar on or off
    (default: on when stderr is a terminal); `transient` bars vanish when done. `remaining`, a format
    string, replaces rich's time-left estimate for a job that measures its own pace (rich's needs
    several updates within 30 s, so it shows nothing for slow steps).
    """
    console = stderr_console()
    parts = [TextColumn(description), BarColumn()]
    if count:
        parts.append(MofNCompleteColumn())
    parts += [TextColumn(c) for c in columns]
    if elapsed:
        parts.append(TimeElapsedColumn())
    if remaining is not None:
        parts.append(TextColumn(remaining))
    else:
        parts += [TextColumn("ETA")] if elapsed else []
        parts.append(TimeRemainingColumn())
    visible = console.is_terminal if show is None else show
    with Progress(*parts, console=console, transient=transient, disable=not visible) as progress:
        task = progress.add_task(description, total=total, completed=completed, **(fields or {}))
        yield Bar(progress, task)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with `message` on stderr while a step without measurable progress runs."""
    with stderr_console().status(message):
        yield
