"""The layering of docs/architecture.md, checked on the source: imports flow one way, typer only in the
command layer, rich's progress only in dtools.progress, and every module belongs to a layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dtools"

# Lower layers never import higher ones; a module may import its own layer and any lower one.
LAYERS = {
    "base": ["dtools", "dtools.errors", "dtools.models", "dtools.choices", "dtools.sampler_specs"],
    "math": ["dtools.schedules", "dtools.diffusion", "dtools.samplers", "dtools.unet", "dtools.unet_kernels",
             "dtools.ema", "dtools.posthoc_ema", "dtools.dcgan", "dtools.vae"],
    "io": ["dtools.fileio", "dtools.tensorfile", "dtools.checkpoint", "dtools.images", "dtools.runtime",
           "dtools.progress", "dtools.plots", "dtools.diffusers_format", "dtools.diffusers_folder",
           "dtools.schedule_io", "dtools.labels", "dtools.locks"],
    "jobs": ["dtools.train", "dtools.sample", "dtools.edit", "dtools.fid", "dtools.prep", "dtools.noise",
             "dtools.grid", "dtools.info", "dtools.posthoc", "dtools.pack"],
    "commands": ["dtools.commands", "dtools.cli", "dtools.docgen", "dtools.__main__"],
}
ORDER = list(LAYERS)
# Modules under dtools/commands/ that are not commands: what every command shares (the option vocabulary).
SHARED_BY_COMMANDS = {"dtools.commands.options"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The layer of a dtools module: the longest listed name that is the module or a package above it
    (the root package `dtools` counts only for itself and its dunder attributes such as __version__)."""
    best = None
    for layer, names in LAYERS.items():
        for name in names:
            inside = module == name or (name != "dtools" and module.startswith(name + "."))
            if inside and (best is None or len(name) > len(best[1])):
                best = (layer, name)
    if best is None and module.count(".") == 1 and module.split(".")[1].startswith("__"):
        return "base"
    return best[0] if best else None


def imports(path: Path, package: list[str] | None = None) -> list[str]:
    """Every module a file imports, at any depth (inside functions too). `from a import b` counts as
    both `a` and `a.b`, since b may be a module. Relative imports are resolved against `package`."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                assert package is not None, f"relative import in {path}"
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names]
    return out


def package_of(path: Path) -> list[str]:
    parts = module_name(path).split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


SOURCES = sorted(PACKAGE.rglob("*.py"))


def violations(me: str, names: list[str]) -> list[str]:
    """The imports of module `me` that break the layering (an upward import, typer outside the
    commands, rich's progress outside dtools.progress, a command importing another command)."""
    mine = layer_of(me)
    if mine is None:
        return [f"{me} is in no layer of docs/architecture.md"]
    out = []
    for name in names:
        theirs = layer_of(name) if name.startswith("dtools.") else None
        if theirs is not None and ORDER.index(theirs) > ORDER.index(mine):
            out.append(f"{me} ({mine}) imports {name} ({theirs})")
        if mine != "commands" and (name == "typer" or name.startswith("typer.")):
            out.append(f"{me} imports typer")
        if me != "dtools.progress" and name.startswith("rich.progress"):
            out.append(f"{me} imports rich.progress")
        if (me.startswith("dtools.commands.") and name.startswith("dtools.commands.") and name != me
                and not name.startswith(me + ".") and name not in SHARED_BY_COMMANDS):
            out.append(f"{me} imports another command, {name}")
    return out


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_flow_one_way(path):
    assert violations(module_name(path), imports(path, package_of(path))) == []


@pytest.mark.parametrize(
    "me, name",
    [
        ("dtools.unet", "dtools.train.loop"),  # math importing a job
        ("dtools.checkpoint", "dtools.commands.sample"),  # io importing a command
        ("dtools.sample", "typer"),
        ("dtools.train.loop", "rich.progress"),
        ("dtools.commands.noise", "dtools.commands.schedule"),
        ("dtools.newthing", "numpy"),  # a module in no layer
    ],
)
def test_a_violation_is_reported(me, name):
    assert violations(me, [name])


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from dtools.commands import train\n    import typer\n"
                   "    from .x import y\n")
    names = imports(src, ["dtools", "fid"])
    assert {"dtools.commands.train", "typer", "dtools.fid.x", "dtools.fid.x.y"} <= set(names)
    assert "dtools.errors" in imports(PACKAGE / "schedules.py")


MODULES = {module_name(p): p for p in SOURCES}


def import_graph() -> dict[str, set[str]]:
    """Module -> the dtools modules it imports, at any depth (inside functions too). `from a import b`
    names the module a.b when b is one (a package's __init__ is not run into a circle by that)."""
    graph = {}
    for me, path in MODULES.items():
        edges = set()
        for name in imports(path, package_of(path)):
            if name in MODULES and name != me:
                edges.add(name)
        # `from a import b` counts both a and a.b: where a.b is a module, a is only its package
        graph[me] = {n for n in edges if not any(m.startswith(n + ".") and m in edges for m in edges)
                     or n not in {module_name(p) for p in SOURCES if p.name == "__init__.py"}}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_another_in_a_circle():
    assert circles(import_graph()) == []


def test_a_circle_is_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
