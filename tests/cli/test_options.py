"""The option vocabulary (docs/formats.md, "Options"), checked on every command's Click parameters, so
that a command added later is held to it too: one meaning per short flag, one help style, choices
listed, clean usage lines, the same --device everywhere, --seed >= 0 everywhere, and a bad option
value is a usage error (exit 2) naming the option. Old spellings parse but are never shown."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from dtools.cli import app, click_command
from dtools.commands import COMMANDS
from dtools.commands import options as opt

ROOT = click_command()

# The least each command needs on its command line to get past argument checks (no file is read:
# option values are checked first). A new command adds its line here.
MINIMAL_ARGS = {
    "prep": ["twemoji", "out", "--size", "8"],
    "schedule": ["linear"],
    "noise": ["img.png", "-b", "linear"],
    "train": ["data", "-o", "run"],
    "ema": ["run", "-o", "ema.safetensors", "--length", "0.1"],
    "sample": ["ckpt.safetensors"],
    "edit": ["ckpt.safetensors", "img.png"],
    "invert": ["ckpt.safetensors", "img.png"],
    "interpolate": ["ckpt.safetensors", "--seeds", "1,2"],
    "grid": ["img.png"],
    "fid": ["a", "b"],
    "pack": ["run", "-o", "out"],
    "export": ["ckpt.safetensors", "-o", "out"],
    "import": ["folder", "-o", "ckpt.safetensors"],
    "info": ["run"],
    "nn": ["train", "samples"],
    "sweep": ["ckpt.safetensors", "ref", "--samplers", "ddim:10", "-o", "out"],
}


def command(name):
    return ROOT.commands[name]


def visible_options(name):
    return [p for p in command(name).params if p.param_type_name == "option" and not p.hidden]


def long_name(param) -> str:
    longs = [o for o in param.opts if o.startswith("--")]
    assert len(longs) == 1, f"{param.name}: one long spelling is shown, got {param.opts}"
    return longs[0]


def help_record(name, param):
    ctx = command(name).make_context(name, list(MINIMAL_ARGS[name]), resilient_parsing=True)
    return param.get_help_record(ctx)


def help_text(runner, name) -> str:
    res = runner.invoke(app, [name, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.stderr
    return res.stdout


def test_every_command_uses_the_shared_layout_and_has_minimal_args():
    for name in COMMANDS:
        assert isinstance(command(name), opt.DtoolsCommand), name
        assert name in MINIMAL_ARGS, f"add `dtools {name}`'s least arguments to MINIMAL_ARGS"


def test_one_meaning_per_short_flag():
    """Across all commands a short flag always stands for the same long option, and an option that has
    a short flag somewhere has it everywhere."""
    longs_of_short, shorts_of_long = defaultdict(set), defaultdict(set)
    for name in COMMANDS:
        for p in visible_options(name):
            shorts = tuple(o for o in p.opts if not o.startswith("--"))
            for s in shorts:
                longs_of_short[s].add(long_name(p))
            if p.opts != ["--help"] and p.opts != ["-h", "--help"]:
                shorts_of_long[long_name(p)].add(shorts)
    clashes = {s: sorted(ls) for s, ls in longs_of_short.items() if len(ls) > 1}
    assert not clashes, f"short flags with several meanings: {clashes}"
    uneven = {lng: sorted(s) for lng, s in shorts_of_long.items() if len(s) > 1}
    assert not uneven, f"options spelled with different short flags in different commands: {uneven}"
    assert longs_of_short["-o"] == {"--output"} and longs_of_short["-n"] == {"--num"}
    assert longs_of_short["-b"] == {"--beta"} and longs_of_short["-s"] == {"--sampler"}


def test_old_spellings_parse_and_are_hidden(runner):
    """Each command's old spellings stay usable, never clash with what the command shows, and never
    appear in --help."""
    for name in COMMANDS:
        cmd = command(name)
        shown = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
        text = help_text(runner, name)
        for old in cmd.old_spellings.values():
            assert not set(old) & shown, (name, old)
            for spelling in old:
                assert not re.search(rf"(^|[\s,]){re.escape(spelling)}([\s,=]|$)", text, re.MULTILINE), (
                    name, spelling)
    assert command("train").old_spellings == {"out": ("--out",), "batch_size": ("--batch",)}
    assert command("prep").old_spellings["size"] == ("-s",)
    assert command("sample").old_spellings["batch_size"] == ("-b",)


@pytest.mark.parametrize(
    "args, key, value",
    [
        (["train", "data", "--out", "RUN", "--batch", "8"], ("out", "batch_size"), ("RUN", 8)),
        (["prep", "twemoji", "o", "-s", "16", "-n", "3", "--bg", "black"], ("size", "limit", "background"),
         (16, 3, "black")),
        (["sample", "c", "-b", "5"], ("batch_size",), (5,)),
        (["fid", "a", "b", "-b", "7"], ("batch_size",), (7,)),
        (["noise", "i", "-b", "linear", "-n", "2", "--T", "50"], ("limit", "T"), (2, 50)),
        (["schedule", "linear", "--T", "50"], ("timesteps",), (50,)),
    ],
)
def test_an_old_spelling_sets_its_option(args, key, value):
    name, rest = args[0], args[1:]
    ctx = command(name).make_context(name, rest)
    assert tuple(ctx.params[k] for k in key) == value


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_is_uniform(runner, name):
    """Defaults in one style and never missing, choices listed, no type tags, a clean usage line."""
    text = help_text(runner, name)
    usage = text.splitlines()[0]
    assert "{" not in usage and "...]..." not in usage and "<" not in usage, usage
    args = text.split("Arguments:", 1)[1].split("Options:", 1)[0] if "Arguments:" in text else ""
    assert "<" not in args, args
    for p in visible_options(name):
        if p.opts == ["-h", "--help"]:
            continue
        flags = f"{name} {'/'.join(p.opts)}"
        assert p.help and not re.search(r"\[[^\]]*\]\s*$", p.help), f"{flags}: a default written by hand"
        assert "[default" not in p.help, f"{flags}: a default written by hand"
        record = help_record(name, p)
        assert record is not None
        opts_text, help_ = record
        plain_flag = p.is_flag and not p.secondary_opts
        if not plain_flag:
            assert p.required or "[default: " in help_, f"{flags} shows no default"
            assert help_.count("default: ") == (0 if p.required else 1), f"{flags}: {help_}"
        if not p.is_flag:
            assert p.metavar and p.metavar != "TEXT" and not p.metavar.startswith("<"), (
                f"{flags}: name what it takes (a metavar or choices), not {p.metavar!r}")
    assert "default: (" not in text, "a described default is shown without parentheses"


def test_choices_are_listed_and_device_lists_agree():
    metavars = defaultdict(set)
    for name in COMMANDS:
        for p in visible_options(name):
            if long_name(p) in ("--device", "--precision", "--weights", "--variance", "--sampler"):
                metavars[long_name(p)].add(p.metavar)
    assert metavars["--device"] == {"[auto|cpu|cuda|cuda:N|mps]"}
    assert metavars["--precision"] == {"[auto|bf16|fp16|fp32]"}
    assert metavars["--weights"] == {"[ema|raw]"}
    assert metavars["--sampler"] == {"[ddpm|ddim|dpm++2m|heun]"}


def test_listed_choices_match_the_registries():
    import importlib

    from dtools.checkpoint import MODEL_TYPES

    sample, train = (importlib.import_module(f"dtools.commands.{n}") for n in ("sample", "train"))
    from dtools.diffusion import PARAMETERIZATIONS, SPACING, T_DISTRIBUTIONS, VARIANCE_FIELDS
    from dtools.runtime import DEVICES, PRECISIONS
    from dtools.train.presets import PRESETS

    assert set(opt.DEVICES) - {"cuda:N"} == set(DEVICES) and opt.PRECISIONS == PRECISIONS
    assert train.MODELS == tuple(MODEL_TYPES) and train.PARAMETERIZATIONS == PARAMETERIZATIONS
    assert train.PRESETS == ("auto", *PRESETS)
    assert train.T_DISTRIBUTIONS == T_DISTRIBUTIONS
    assert set(train.LR_DECAYS) == set(importlib.import_module("dtools.train.lr").DECAYS)
    assert set(sample.VARIANCES) == set(VARIANCE_FIELDS) and set(sample.SPACINGS) == set(SPACING)


def bad_values(name):
    """(option, bad value) for every option of the command whose value Click checks."""
    for p in visible_options(name):
        if p.is_flag or p.opts == ["-h", "--help"]:
            continue
        if p.metavar.startswith("["):
            yield long_name(p), "bogus"
        elif p.metavar in ("N", "X"):
            yield long_name(p), "twelve"


CASES = [(name, o, v) for name in COMMANDS for o, v in bad_values(name)] + [
    ("prep", "--background", "blurple"),
    ("noise", "-t", "0,x"),
    ("noise", "-t", "5000"),
]


@pytest.mark.parametrize("name, option, value", CASES, ids=lambda x: str(x))
def test_a_bad_option_value_is_a_usage_error(runner, png_maker, tmp_path, name, option, value):
    png_maker(tmp_path, 1)
    args = [a if a != "img.png" else str(tmp_path / "000000.png") for a in MINIMAL_ARGS[name]]
    res = runner.invoke(app, [name, *args, option, value])
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert option in res.stderr and "Usage:" in res.stderr, res.stderr


@pytest.mark.parametrize("name", [n for n in COMMANDS if any("--seed" in p.opts for p in visible_options(n))])
def test_a_negative_seed_is_refused_everywhere(runner, name):
    res = runner.invoke(app, [name, *MINIMAL_ARGS[name], "--seed", "-1"])
    assert res.exit_code == 2 and "--seed" in res.stderr, res.stderr


def test_seed_device_and_precision_are_the_shared_definitions():
    """Every command that takes one of these takes the definition in dtools/commands/options.py."""
    for name in COMMANDS:
        for p in visible_options(name):
            if long_name(p) == "--seed":
                assert p.opts == ["--seed"] and "x>=0" in help_record(name, p)[1], name
            if long_name(p) == "--device":
                assert opt.DEVICE_HELP in p.help, name
