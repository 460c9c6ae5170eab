"""The names `dtools train` lets a user choose from, in one place that imports no torch, so that
`--help` stays fast. Each names the keys of a registry that implements it (tests/cli/test_options.py
checks they agree): parameterizations (dtools.diffusion.PARAMETERIZATION), the U-Net presets
(dtools.train.presets.PRESETS), learning-rate decays (dtools.train.lr.DECAYS) and the timestep
distributions of a training step (dtools.diffusion.draw_timesteps, which takes its names from here),
and what a network is conditioned on (--cond, dtools.train.config).
Model types have a registry of their own that needs no torch: dtools.models.MODEL_TYPES.
"""

PARAMETERIZATIONS = ("eps", "x0", "v", "edm")
PRESETS = ("auto", "cpu16", "cpu32", "seed64")  # auto: by image size
LR_DECAYS = ("cosine", "linear", "wsd", "constant")
T_DISTRIBUTIONS = ("uniform", "lognormal")
CONDS = ("auto", "class", "none")  # --cond: what a network is conditioned on (dtools.train.config)
