"""The learning rate over a run: a linear warm-up, then a decay that ends with the run.

Progress p runs from 0 to 1 over the run: steps done / total steps when the run is sized in steps
(--max-steps, --epochs), or training seconds / budget when it is sized in time alone (--max-minutes), so
a 5-minute and a 60-minute run both warm up and then anneal over the whole of their budget.
`factor(p)` multiplies --lr.
"""

from __future__ import annotations

import math
from collections.abc import Callable

COOLDOWN = 0.2  # wsd: the last fifth of the run after warm-up (Hägele et al. 2024 found 20 % matches cosine)

# decay shape on [warm-up end, 1], from 1 to 0
DECAYS: dict[str, Callable[[float], float]] = {
    "cosine": lambda q: 0.5 * (1.0 + math.cos(math.pi * q)),
    "linear": lambda q: 1.0 - q,
    # warm-up, stable, decay (Hu et al. 2024): constant, then linear to 0 over the last COOLDOWN
    "wsd": lambda q: min(1.0, (1.0 - q) / COOLDOWN),
    "constant": lambda q: 1.0,
}


def factor(progress: float, warmup: float, decay: str = "cosine", floor: float = 0.0) -> float:
    """The multiplier of the base learning rate at `progress` (clamped to [0, 1]).

    `warmup` is the fraction of the run spent ramping up linearly (0 = none); after it the factor
    falls from 1 to `floor` along `decay`.
    """
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return max(p / warmup, 1e-3)  # never exactly 0: a first step with lr 0 would be wasted
    q = (p - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    return floor + (1.0 - floor) * DECAYS[decay](q)
