"""The docs cannot drift: docs/commands.md is the current --help, every command has its page, and
every relative link or picture in the README and in docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dtools.commands import COMMANDS
from dtools.docgen import render

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)  # not in code blocks
    links = [m.group(1) for m in LINK.finditer(text)]
    return [u.split("#", 1)[0] for u in links if not re.match(r"[a-z]+:|#|mailto:", u) and u.split("#", 1)[0]]


def test_commands_page_is_current():
    page = DOCS / "commands.md"
    assert page.exists(), "docs/commands.md is missing; run `make docs`"
    assert page.read_text(encoding="utf-8") == render(), (
        "docs/commands.md differs from the current --help of the commands; run `make docs` and commit it"
    )


def test_render_lists_every_command_in_order():
    page = render()
    headings = re.findall(r"^## dtools ?(\S*)$", page, re.MULTILINE)
    assert headings == ["", *COMMANDS]
    for name in COMMANDS:
        assert f"Usage: dtools {name} [OPTIONS]" in page


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_a_page(command):
    page = DOCS / f"{command}.md"
    assert page.exists(), f"docs/{command}.md is missing (every command has its own page)"
    text = page.read_text(encoding="utf-8")
    assert f"dtools {command}" in text and "```" in text, f"docs/{command}.md shows no example"


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_exist(page):
    missing = [u for u in relative_links(page) if not (page.parent / u).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
