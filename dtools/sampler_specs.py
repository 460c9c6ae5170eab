"""The samplers of dtools: one spec each, in one registry, SAMPLERS.

A spec says everything the rest of dtools asks of a sampler: its `--sampler` name and help line, how
many network calls it makes for a chain of n timesteps, its default number of steps (a number, or
"T": the whole chain of the schedule), the options it takes with their defaults (the keyword arguments
of its function, and the `dtools sample` flags of the same names), and its function, named as
"module:function" and imported when first used. DEFAULT_SAMPLER is the one default of `dtools sample`,
`dtools sweep`, `samplers.generate` and training's sample grids.

This module imports no torch: `--help` reads it, and it sits below everything that uses it (the
samplers' maths in dtools.samplers, sample, sweep, the commands). `lookup` is the one check of a
sampler's name, `check_applies` the one check that an option given belongs to the sampler.

Adding a sampler: a module in dtools/samplers/ with its function (the signature of the others:
`(denoise, x, chain, noise, callback=None, *, OPTIONS) -> x0`), then one line in SAMPLERS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from dtools.errors import DtoolsError, OptionError


@dataclass(frozen=True)
class SamplerSpec:
    """What a sampler is to dtools (see the module's docstring)."""

    name: str  # --sampler
    help: str  # its line in `dtools sample --help`
    function: str  # "module:function": (denoise, x, chain, noise, callback=None, **options) -> x0
    calls_per_step: int = 1  # network calls per image: calls_per_step * steps + extra_calls
    extra_calls: int = 0
    default_steps: int | Literal["T"] = 20  # "T": every timestep of the schedule
    # the options it takes (its function's keyword arguments, the flags of `dtools sample`) and defaults
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # whether it draws no noise after x_T (a given x_T, `dtools invert`'s, then decodes to one image);
    # a sampler with an `eta` option is deterministic only at eta = 0
    deterministic: bool = True

    def nfe(self, steps: int) -> int:
        """Network calls per image for a chain of `steps` timesteps."""
        return self.calls_per_step * steps + self.extra_calls

    def nfe_formula(self) -> str:
        """`nfe` as help writes it: 'steps', '2*steps-2'."""
        calls = "steps" if self.calls_per_step == 1 else f"{self.calls_per_step}*steps"
        return calls + (f"{self.extra_calls:+d}" if self.extra_calls else "")

    def steps_for(self, T: int) -> int:
        """The default number of steps on a schedule of T timesteps."""
        return T if self.default_steps == "T" else self.default_steps

    def arguments(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of its function: each of its options as given (not None), else its
        default; options it does not take are left out."""
        return {k: given[k] if given.get(k) is not None else default for k, default in self.options.items()}

    def is_deterministic(self, eta: float | None = None) -> bool:
        """Whether this sampler with this --eta (None: its default) draws no noise after x_T."""
        eta = self.options.get("eta") if eta is None else eta
        return self.deterministic and not eta

    def load(self) -> Callable[..., Any]:
        """The sampler function itself (imported on first use)."""
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("ddpm", "ancestral, 1 call/step, the seed's sampler (default --steps T)",
                "dtools.samplers.ddpm:ddpm", default_steps="T", deterministic=False,
                options=MappingProxyType({"variance": "posterior"})),
    SamplerSpec("ddim", "DDIM with --eta, 1 call/step", "dtools.samplers.ddim:ddim",
                options=MappingProxyType({"eta": 0.0})),
    SamplerSpec("dpm++2m", "DPM-Solver++(2M), 1 call/step, good at 10-50 steps",
                "dtools.samplers.dpmpp_2m:dpmpp_2m"),
    SamplerSpec("heun", "Heun (Karras et al.), 2 calls/step", "dtools.samplers.heun:heun",
                calls_per_step=2, extra_calls=-2),
)}
# `dtools sample` and `dtools sweep` without --sampler, `samplers.generate`, training's sample grids
DEFAULT_SAMPLER = "dpm++2m"


def lookup(name: str, option: str = "--sampler", item: str | None = None) -> SamplerSpec:
    """The spec of sampler `name`, or the one-line error every caller gives for an unknown name
    (`item`: the `dtools sweep --samplers` item it was read from)."""
    if name in SAMPLERS:
        return SAMPLERS[name]
    names = ", ".join(SAMPLERS)
    if item is None:
        raise OptionError(option, f"unknown sampler {name!r}; choose one of {names}")
    raise OptionError(option, f"unknown sampler {name!r} in {item!r}; choose from {names}")


def takers(option: str) -> str:
    """The samplers that take `option`, as help and errors name them: 'ddim'."""
    names = [s.name for s in SAMPLERS.values() if option in s.options]
    assert names, f"no sampler takes {option!r}"
    return " or ".join(names)


def option_default(option: str) -> Any:
    """The default of `option` (the samplers that take it agree on it)."""
    defaults = {s.options[option] for s in SAMPLERS.values() if option in s.options}
    assert len(defaults) == 1, (option, defaults)
    return defaults.pop()


def deterministic_samplers() -> str:
    """The samplers that decode a given x_T deterministically, as errors name them."""
    names = [s.name + (" (--eta 0)" if "eta" in s.options else "") for s in SAMPLERS.values()
             if s.is_deterministic(0.0)]
    return ", ".join(names)


def check_applies(sampler: str, **given: Any) -> SamplerSpec:
    """The spec of `sampler`; a one-line error for an unknown name, or for an option given (not None)
    that it does not take ('--eta applies to --sampler ddim, not dpm++2m')."""
    spec = lookup(sampler)
    for option, value in given.items():
        if value is not None and option not in spec.options:
            raise DtoolsError(f"--{option} applies to --sampler {takers(option)}, not {sampler}")
    return spec

