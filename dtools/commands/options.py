"""The option vocabulary every command shares, and how a command shows and parses its options.

One spelling per meaning (docs/formats.md, "Options"): a short flag means the same in every command
(-o output, -f force, -n number of images to make, -b schedule, -s sampler, -T diffusion steps), and
an option that several commands take is defined once here (its flags, help, metavar and how its
default is shown). A new command takes its options from here; tests/cli/test_options.py walks every
command and holds it to the rules.

Old spellings that scripts may hold (`train --out`, `sample -b 32`, `prep -s 32`) keep working as
hidden aliases: `old=("--out",)` on an option adds them to the parser of that command only, never to
its --help. DtoolsCommand also gives every command the same help layout: `[default: X]` for every
option that takes a value, arguments without type tags, and a plain usage line (`SRC [OUT]`).
"""

from __future__ import annotations

import re
import typing
from collections import Counter
from collections.abc import Callable, Sequence

import typer
from typer.core import TyperCommand

from dtools.sampler_specs import SAMPLERS, option_default, takers

# The choices of the runtime (dtools.runtime.DEVICES, PRECISIONS; a test keeps them in step), listed
# here so that `--help` does not import torch.
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICE_HELP = "Where to run: auto picks cuda, then mps, else the cpu."


def choices_metavar(choices: Sequence[str]) -> str:
    return "[" + "|".join(choices) + "]"


# The metavar of an option that names none: what the value is, in one word (a str option must name one).
TYPE_METAVARS = {int: "N", float: "X"}


def _choice_parser(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _parse_device(value: str) -> str:
    if value in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", value):
        return value
    raise typer.BadParameter(f"{value!r} is not a device; choose one of {', '.join(DEVICES)}")


def option(default, *decls: str, help: str, old: Sequence[str] = (), **kw) -> typer.models.OptionInfo:
    """typer.Option plus `old`: earlier spellings that still parse but are not shown."""
    info = typer.Option(default, *decls, help=help, **kw)
    info.dtools_old = tuple(old)
    return info


def choice(default, *decls: str, choices: Sequence[str], help: str, **kw) -> typer.models.OptionInfo:
    """An option taking one of `choices`: --help lists them, anything else is a usage error (exit 2)."""
    return option(default, *decls, help=help, parser=_choice_parser(tuple(choices)),
                  metavar=choices_metavar(choices), **kw)


# ------------------------------------------------------------------------------ the shared options
def output(help: str, *, default=None, show_default: str | None = "stdout", metavar: str = "FILE",
           old: Sequence[str] = ()):
    """-o/--output: where the result goes. Omitted (or '-') means stdout for commands that write data."""
    kw = {"show_default": show_default} if show_default else {}
    return option(default, "-o", "--output", metavar=metavar, help=help, old=old, **kw)


def force(help: str = "Overwrite existing output files."):
    return option(False, "--force", "-f", help=help)


def seed(default: int | None = 0, help: str = "Seed of the random numbers.", show_default: str | None = None):
    """--seed N >= 0 in every command (a negative seed is a usage error everywhere)."""
    kw = {"show_default": show_default} if show_default else {}
    return option(default, "--seed", min=0, help=help, **kw)


def device(default: str | None = "auto", show_default: str | None = None):
    kw = {"show_default": show_default} if show_default else {}
    return option(default, "--device", parser=_parse_device, metavar=choices_metavar(DEVICES),
                  help=DEVICE_HELP, **kw)


def precision(help: str, default: str | None = "auto", show_default: str | None = None):
    kw = {"show_default": show_default} if show_default else {}
    return choice(default, "--precision", choices=PRECISIONS, help=help, **kw)


def batch_size(default: int | None = 64, help: str = "Images per network call (memory; same results).",
               old: Sequence[str] = (), show_default: str | None = None):
    kw = {"show_default": show_default} if show_default else {}
    return option(default, "--batch-size", min=1, help=help, old=old, **kw)


def num(default: int = 64, help: str = "Number of images to make.", min: int = 1):
    return option(default, "-n", "--num", min=min, help=help)


def limit(help: str = "Use only the first N images.", old: Sequence[str] = ()):
    return option(None, "--limit", min=1, metavar="N", help=help, old=old, show_default="all")


def nrow(help: str):
    return option(None, "--nrow", min=1, help=help, show_default="√N")


def timesteps(help: str = "Number of diffusion steps T.", default: int = 1000):
    return option(default, "-T", "--timesteps", min=2, help=help, old=("--T",))


def beta(help: str, default=None, show_default: str | None = None):
    kw = {"show_default": show_default} if show_default else {}
    return option(default, "--beta", "-b", metavar="NAME|FILE", help=help, **kw)


def sampler(choices: Sequence[str], help: str, default=None, show_default: str | None = None):
    kw = {"show_default": show_default} if show_default else {}
    return choice(default, "--sampler", "-s", choices=choices, help=help, **kw)


def steps(help: str, default=None, show_default: str | None = None):
    kw = {"show_default": show_default} if show_default else {}
    return option(default, "--steps", min=2, help=help, **kw)


def weights(help: str = "ema: the EMA weights; raw: the online weights, without EMA."):
    return choice("ema", "--weights", choices=("ema", "raw"), help=help)


# ------------------------------------------------------------- a diffusion model's sampling options
# (sample, edit, invert, interpolate). Kept in step with dtools.diffusion (tests/cli/test_options.py
# checks); listed here so that `dtools --help` does not import torch. The samplers' facts come from
# their specs (no torch either).
VARIANCES = ("beta", "posterior")  # dtools.diffusion.VARIANCE_FIELDS
SPACINGS = ("trailing", "linspace", "leading")  # dtools.diffusion.SPACING


def sampler_help() -> str:
    """--sampler's help: each sampler's help line."""
    return "; ".join(f"{s.name}: {s.help}" for s in SAMPLERS.values()) + "."


def steps_help() -> str:
    """--steps' help, naming the samplers whose network calls are not one per step."""
    odd = [f"{s.name}: {s.nfe_formula()}" for s in SAMPLERS.values() if s.nfe_formula() != "steps"]
    return "Timesteps visited, 2..T: network calls per image" + (f" ({'; '.join(odd)})" if odd else "") + "."


def default_steps() -> str:
    """--steps' default as help shows it: 'T for ddpm, 20 otherwise'."""
    usual = Counter(s.default_steps for s in SAMPLERS.values()).most_common(1)[0][0]
    others = [f"{s.default_steps} for {s.name}" for s in SAMPLERS.values() if s.default_steps != usual]
    return ", ".join([*others, f"{usual} otherwise"]) if others else str(usual)


def eta():
    return option(None, "--eta", show_default=f"{option_default('eta'):g}",
                  help=f"{takers('eta')} only: noise scale, 0 = deterministic, 1 = ddpm's posterior "
                  "variance.")


def variance():
    return choice(None, "--variance", choices=VARIANCES, show_default=option_default("variance"),
                  help=f"{takers('variance')} only: reverse variance beta (β_t) or posterior (β̃_t).")


def spacing():
    return choice(None, "--spacing", choices=SPACINGS, show_default="trailing",
                  help="Which timesteps a --steps < T chain keeps: trailing (starts at T-1), linspace (both "
                  "ends), leading (DDIM's original).")


def clip():
    return option(None, "--clip/--no-clip", help="Clip each predicted x0 to [-1, 1].", show_default="clip")


def classes(help: str, show_default: str = "every class in turn"):
    return option(None, "--class", metavar="C", show_default=show_default, help=help)


def guidance(show_default: str = "1 with --guide, else 0: none"):
    return option(None, "--guidance", min=0.0, metavar="W", show_default=show_default,
                  help="Guidance weight: D + W (D - D_weak), from the null class (classifier-free) or from "
                  "--guide (autoguidance); network calls grow where it applies (docs/guidance.md).")


def guidance_interval():
    return option(None, "--guidance-interval", metavar="LO,HI", show_default="every step",
                  help="Guide only where the noise level σ_t = √((1-ᾱ)/ᾱ) lies in (LO, HI], e.g. 0.28,5.42; "
                  "HI may be inf.")


def guide():
    return option(None, "--guide", metavar="CKPT", show_default="the model's null class",
                  help="Autoguidance: a weaker model of the same data and schedule (e.g. "
                  "RUN/guide.safetensors, the early snapshot every run keeps) to guide with.")


def compile_model():
    return option(None, "--compile/--no-compile", help="torch.compile the network.",
                  show_default="on for CUDA, off on the CPU")


def resize(what: str = "images"):
    return option(False, "--resize", help=f"Fit {what} of another size or channel count to the model's "
                  "(centre crop, Lanczos, as `dtools prep`); without it they are refused.")


def refine():
    return option(0, "--refine", min=0, metavar="N",
                  help="Fixed-point iterations per inversion step (N more network calls each): a closer "
                  "round trip (docs/edit.md).")


SAMPLING_PRECISION_HELP = ("auto: bf16 on a CUDA GPU (fp16 on older ones) and on a CPU with AMX, else fp32 "
                           "(docs/performance.md).")
CHECKPOINT_HELP = ("Model checkpoint written by `dtools train` (RUN/model.safetensors), or the run folder "
                   "RUN itself.")


# ---------------------------------------------------------------------------- how commands show them
def _old_spellings(callback) -> dict[str, tuple[str, ...]]:
    """{parameter name: hidden old spellings} from the OptionInfo defaults of the command function."""
    import inspect

    if callback is None:
        return {}
    out = {}
    hints = {}
    try:
        hints = typing.get_type_hints(inspect.unwrap(callback), include_extras=True)
    except Exception:  # noqa: BLE001 - annotations are optional here
        pass
    for name, p in inspect.signature(callback).parameters.items():
        infos = [p.default, *getattr(hints.get(name), "__metadata__", ())]
        for info in infos:
            if getattr(info, "dtools_old", ()):
                out[name] = info.dtools_old
    return out


class DtoolsCommand(TyperCommand):
    """One help layout and one parser rule for every command (see the module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.old_spellings = _old_spellings(self.callback)
        for param in self.params:
            if param.param_type_name == "option" and not param.is_flag and param.metavar is None:
                annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
                param.metavar = TYPE_METAVARS.get(annotation, "TEXT")

    def make_parser(self, ctx):
        parser = super().make_parser(ctx)
        for param in self.get_params(ctx):
            old = self.old_spellings.get(param.name)
            if old:
                assert not param.is_flag, f"old spellings of flag {param.name} are not supported"
                action = "append" if param.multiple else "store"
                parser.add_option(obj=param, opts=list(old), dest=param.name, action=action,
                                  nargs=param.nargs)
        return parser

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(argument_usage(param))
        return pieces

    def format_options(self, ctx, formatter) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                help = param.help or ""
                args.append((argument_name(param), help + ("  [required]" if param.required else "")))
            elif (record := param.get_help_record(ctx)) is not None:
                name, help = record
                if isinstance(param.show_default, str):  # a described default: no parentheses
                    help = help.replace(f"default: ({param.show_default})", f"default: {param.show_default}")
                opts.append((name, help))
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


def argument_name(param) -> str:
    return param.metavar or param.name.upper()


def argument_usage(param) -> str:
    """SRC, [OUT], NAME... or [SOURCE]...: click's plain convention."""
    name = argument_name(param)
    if not param.required:
        name = f"[{name}]"
    return name + ("..." if param.nargs != 1 else "")
