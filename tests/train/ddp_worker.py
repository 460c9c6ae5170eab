"""One training process of tests/train/test_distributed.py, run by torchrun (or alone, or imported).

`python ddp_worker.py SPEC.json` trains the runs SPEC lists, in order, with the real Trainer, and for
each writes OUT/rank<R>.safetensors: every network of the method ("<network>.<key>", EMA included)
and the images each step trained on in this process ("batch.<step>"). A run may ask one rank to
raise at some step ("fail": [rank, step]), to show how a broken process ends the others; errors are
printed as the CLI prints them (dtools.train.distributed.speaks decides which process says it). A run
may set one rank's clock ahead ("skew": [rank, seconds]), as two processes' clocks differ; the step at
which each process kept the guide is recorded ("guide_step").
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from dtools import train as training
from dtools.errors import DtoolsError
from dtools.schedules import make_schedule
from dtools.train import distributed
from dtools.train.data import data_classes, peek


class Recording(training.Trainer):
    """The Trainer, keeping what real_batch() gave this process at each step."""

    def __init__(self, *args, fail: tuple[int, int] | None = None, skew: tuple[int, float] | None = None,
                 **kw):
        super().__init__(*args, **kw)
        self.batches: list[torch.Tensor] = []
        self.fail, self.skew = fail, skew
        self.guide_step: int | None = None

    def elapsed(self) -> float:
        ahead = self.skew is not None and self.group.rank == self.skew[0]
        return super().elapsed() + (self.skew[1] if ahead else 0.0)

    def save_guide(self) -> None:
        super().save_guide()
        self.guide_step = self.step

    def real_batch(self):
        if self.fail is not None and (self.group.rank, self.step + 1) == tuple(self.fail):
            raise RuntimeError(f"rank {self.group.rank} broke on purpose at step {self.step + 1}")
        batch = super().real_batch()
        self.batches.append(batch.images.detach().clone())
        return batch


def config(run: dict) -> training.TrainConfig:
    options = dict(run["options"])
    shape = peek(run["data"])
    if options.get("model_type", "unet") == "unet":
        return training.new_config(run["data"], run["out"], "cosine", make_schedule("cosine", 100), shape,
                                   options, data_classes(run["data"]))
    return training.new_config(run["data"], run["out"], None, np.zeros(0), shape, options)


def train(run: dict) -> Recording:
    """One run of the spec; its record in OUT/rank<R>.safetensors."""
    trainer = Recording(config(run), resume=run.get("resume", False), progress=False, log=lambda m: None,
                        fail=run.get("fail"), skew=run.get("skew"))
    trainer.run()
    tensors = {f"{name}.{k}": v.detach().clone().contiguous()
               for name, module in trainer.method.networks().items() for k, v in module.state_dict().items()}
    tensors.update({f"batch.{i + 1}": b.contiguous() for i, b in enumerate(trainer.batches)})
    if trainer.guide_step is not None:
        tensors["guide_step"] = torch.tensor(trainer.guide_step)
    rank = trainer.group.rank
    save_file(tensors, str(Path(run["out"]) / f"rank{rank}.safetensors"))
    return trainer


def main(spec_path: str) -> int:
    """The runs of the spec in one process group (the Trainer joins it rather than making its own)."""
    torch.set_num_threads(1)
    import torch.distributed as dist

    if distributed.env_rank()[1] > 1:
        dist.init_process_group("gloo", timeout=distributed.timeout())
    try:
        for run in json.loads(Path(spec_path).read_text()):
            train(run)
    except DtoolsError as e:
        if distributed.speaks(e):
            print(f"Error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1]))
