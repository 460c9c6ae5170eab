"""One module per command; each exposes one function that Typer turns into `dtools NAME`.

Command modules parse options and do I/O only, and import heavy libraries (torch) inside the
function so that `dtools --help` stays fast.
"""

from dtools.commands.edit import edit
from dtools.commands.ema import ema
from dtools.commands.export import export
from dtools.commands.fid import fid
from dtools.commands.grid import grid
from dtools.commands.import_ import import_
from dtools.commands.info import info
from dtools.commands.interpolate import interpolate
from dtools.commands.invert import invert
from dtools.commands.nn import nn
from dtools.commands.noise import noise
from dtools.commands.pack import pack
from dtools.commands.prep import prep
from dtools.commands.sample import sample
from dtools.commands.schedule import schedule
from dtools.commands.sweep import sweep
from dtools.commands.train import train

# Pipeline order: this is the order `dtools --help` lists them in.
COMMANDS = {
    "prep": prep,
    "schedule": schedule,
    "noise": noise,
    "train": train,
    "ema": ema,
    "sample": sample,
    "edit": edit,
    "invert": invert,
    "interpolate": interpolate,
    "grid": grid,
    "fid": fid,
    "sweep": sweep,
    "nn": nn,
    "pack": pack,
    "export": export,
    "import": import_,
    "info": info,
}
