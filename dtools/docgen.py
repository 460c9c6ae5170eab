"""Render the `--help` of `dtools` and of every command into one markdown page (docs/commands.md).

    python -m dtools.docgen docs/commands.md      # what `make docs` runs
    python -m dtools.docgen -                     # print the page

The width is fixed (100 columns), not taken from the terminal, so the page is the same on every
machine; tests/test_docs.py checks that the committed page equals a fresh render.
"""

from __future__ import annotations

import sys

from dtools.fileio import atomic_write_bytes, is_stdio

WIDTH = 100
HEADER = """\
# Command reference

Every command's `--help`, generated from the code by `make docs` (`python -m dtools.docgen
docs/commands.md`); do not edit this page by hand (a test compares it with a fresh render).
The commands are listed in pipeline order; each has its own page with examples and pictures.
File formats, errors and exit codes: [formats.md](formats.md).
"""


def _help(command, info_name: str, parent=None) -> tuple[str, object]:
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = command.context_class(command, info_name=info_name, parent=parent, **settings)
    return command.get_help(ctx).rstrip() + "\n", ctx


def render() -> str:
    """The whole page: the root help, then one section per command in the order `dtools --help` lists."""
    from dtools.cli import click_command

    root = click_command()
    text, ctx = _help(root, "dtools")
    names = root.list_commands(ctx)
    parts = [HEADER, "## dtools\n", "```text\n" + text + "```\n"]
    parts.append("Commands: " + ", ".join(f"[{n}](#dtools-{n})" for n in names) + ".\n")
    for name in names:
        sub_text, _ = _help(root.get_command(ctx, name), name, parent=ctx)
        parts.append(f"## dtools {name}\n")
        parts.append(f"Guide: [{name}.md]({name}.md)\n")
        parts.append("```text\n" + sub_text + "```\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dtools.docgen OUT.md   (or - for stdout)", file=sys.stderr)
        return 2
    page = render()
    if is_stdio(args[0]):
        sys.stdout.write(page)
    else:
        atomic_write_bytes(args[0], page.encode("utf-8"), force=True)
        print(f"wrote {args[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
