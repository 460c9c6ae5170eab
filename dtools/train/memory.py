"""How much memory a run's training step needs, said before the run starts rather than learnt from
the kernel's OOM killer (or CUDA's out-of-memory error) mid-run.

`estimate` measures on the run's own networks, on the CPU in fp32, at a tiny batch of PROBE_BATCH
random images of the run's size, and scales to the run's micro-batch:
- states: the tensors a checkpoint's training state holds (raw and EMA weights, the optimizers'
  moments) plus one gradient per trained parameter, in fp32 whatever the precision;
- activations: the tensors autograd saves for the backward pass during one step (counted once per
  storage, the weights excluded), per image, times the micro-batch; floating ones at 2 bytes an
  element in bf16/fp16 (autocast keeps some in fp32: so they count low);
- the data set's uint8 pixels, which train keeps in memory (on the CPU).

It is a floor for one forward and backward pass (a DDPM step, the VAE's): the backward pass's own
temporaries, the allocator's slack and the libraries' workspaces come on top (tests/faults/
test_memory.py measures the peak at a small size against it). A GAN step runs its passes one after
the other, and their saved tensors are added up, which may count above that step's peak. `check`
refuses a run whose floor is more than the memory available: it cannot fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dtools.errors import DtoolsError
from dtools.models import lookup_model
from dtools.runtime import Runtime, resolve
from dtools.train.config import TrainConfig
from dtools.train.data import Batch, BatchStream, available_memory

PROBE_BATCH = 2  # images of the measured step (some layers, e.g. batch norm, want more than one)
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    states: int  # bytes: weights, EMA, optimizer moments, gradients
    activations: int  # bytes: what autograd saves over one step of the micro-batch
    data: int  # bytes: the data set's pixels (on the CPU)
    micro_batch: int
    image_size: int
    device: str

    @property
    def total(self) -> int:
        """On the training device: states and activations, and the data where that is the CPU."""
        return self.states + self.activations + (self.data if self.device == "cpu" else 0)

    def to_dict(self, available: int | None) -> dict[str, object]:
        out = {"gib": round(self.total / GIB, 3), "states_gib": round(self.states / GIB, 3),
               "activations_gib": round(self.activations / GIB, 3), "micro_batch": self.micro_batch,
               "how": f"saved tensors of a step of {PROBE_BATCH} random images measured on the CPU, scaled "
                      f"to {self.micro_batch}; a floor"}
        if available is not None:
            out["available_gib"] = round(available / GIB, 3)
        return out


def estimate(cfg: TrainConfig, rt: Runtime, processes: int = 1) -> MemoryEstimate:
    """The memory one training process of `cfg` needs on `rt` (a floor; see the module's doc)."""
    trial = TrainConfig.from_dict({**cfg.to_dict(), "batch_size": PROBE_BATCH, "grad_accum": 1,
                                   "device": "cpu", "precision": "fp32", "compile": False}, cfg.betas)
    cpu = resolve("cpu", "fp32", False)

    def real_batch() -> Batch:
        x = torch.rand(PROBE_BATCH, cfg.channels, cfg.image_size, cfg.image_size) * 2 - 1
        labels = torch.zeros(PROBE_BATCH, dtype=torch.long) if cfg.classes else None
        return Batch(x, labels)

    saved: dict[int, tuple[int, bool]] = {}  # storage address -> (bytes, floating)

    with torch.random.fork_rng(devices=[]):  # the run's own seeding must not notice
        torch.manual_seed(cfg.seed)
        method = lookup_model(cfg.model_type).method_class()(trial, cpu, real_batch)
        weights = {p.untyped_storage().data_ptr() for net in method.networks().values()
                   for p in net.parameters()}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights and storage.device.type != "meta":
                saved[storage.data_ptr()] = (storage.nbytes(), t.is_floating_point())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            method.train_step()
        tensors, _ = method.capture(BatchStream(PROBE_BATCH, cfg.seed))
    grads = sum(p.numel() * 4 for net in method.networks().values() for p in net.parameters()
                if p.requires_grad)
    states = sum(t.numel() * 4 for t in tensors.values() if t.is_floating_point()) + grads
    half = rt.precision in ("bf16", "fp16")
    per_batch = sum(n // 2 if half and floating else n for n, floating in saved.values())
    micro = max(1, cfg.batch_size // max(1, processes) // max(1, cfg.grad_accum))
    activations = per_batch * micro // PROBE_BATCH
    data = cfg.num_images * cfg.channels * cfg.image_size * cfg.image_size
    return MemoryEstimate(states, activations, data, micro, cfg.image_size, rt.device.type)


def available(device: torch.device) -> int | None:
    """Bytes free for a training process on `device`: CUDA's free memory, the CPU's MemAvailable;
    None where unknown (e.g. MPS)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        return available_memory()
    return None


def check(est: MemoryEstimate, free: int | None) -> None:
    """Refuse, in one line, a run whose estimate is more than the memory available."""
    if free is None or est.total <= free:
        return
    where = "" if est.device == "cpu" else f" on {est.device}"
    raise DtoolsError(
        f"training needs about {est.total / GIB:.1f} GiB (batch {est.micro_batch} at {est.image_size} px: "
        f"{est.activations / GIB:.1f} GiB of activations, {est.states / GIB:.2f} GiB of weights, gradients "
        f"and optimizer state{', and the data' if est.device == 'cpu' and est.data else ''}); "
        f"{free / GIB:.1f} GiB available{where}; lower --batch-size, or split it with --grad-accum N"
    )
