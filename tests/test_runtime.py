"""dtools.runtime: what `auto` picks, the memory format and optimizer helpers, and the thread guard's
decisions on made-up step times."""

from __future__ import annotations

import copy

import pytest
import torch

from dtools import runtime
from dtools.errors import DtoolsError
from dtools.runtime import Runtime, ThreadGuard

CPU = torch.device("cpu")


def test_auto_precision_is_bf16_only_on_a_cpu_with_amx(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_amx_bf16", lambda: True)
    assert runtime.resolve_precision("auto", CPU) == "bf16"
    assert runtime.resolve_precision("fp32", CPU) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_amx_bf16", lambda: False)
    assert runtime.resolve_precision("auto", CPU) == "fp32"
    assert runtime.resolve_precision("bf16", CPU) == "bf16"  # asked for: allowed, if slow
    assert runtime.resolve_precision("auto", torch.device("mps")) == "fp32"
    with pytest.raises(DtoolsError, match="fp16 needs a GPU"):
        runtime.resolve_precision("fp16", CPU)


def test_amx_detection_agrees_with_the_kernel():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert isinstance(runtime.cpu_has_amx_bf16(), bool)
    if "amx_bf16" not in flags:
        assert not runtime.cpu_has_amx_bf16()


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(8, 3, 1))


def test_prepare_layout_and_model_fn_use_channels_last_on_the_cpu():
    rt = Runtime(CPU, "fp32", False)
    model = rt.prepare(net())
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 4, 4)
    assert rt.layout(x).is_contiguous(memory_format=torch.channels_last)
    assert rt.layout(torch.zeros(3)).shape == (3,)
    out = rt.model_fn(lambda x_t, t: model(x_t))(x, torch.zeros(2, dtype=torch.long))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x))
    assert Runtime(torch.device("mps"), "fp32", False).memory_format == torch.contiguous_format


def test_model_fn_passes_a_condition_only_when_given():
    rt = Runtime(CPU, "fp32", False)
    calls = []

    def network(x_t, t, *cond):
        calls.append(cond)
        return x_t

    fn = rt.model_fn(network)
    x, t, labels = torch.randn(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), torch.tensor([1, 2])
    fn(x, t)
    fn(x, t, None)
    fn(x, t, labels)
    assert calls[:2] == [(), ()] and len(calls[2]) == 1 and calls[2][0] is labels


def test_adam_is_fused_and_a_reloaded_state_continues_exactly():
    """A resumed run's Adam moments come back from a file in NCHW order; the fused kernel walks
    parameter and moments as flat memory, so they must be laid out like the (channels-last) weights."""
    rt = Runtime(CPU, "fp32", False)
    x = torch.randn(4, 3, 6, 6)

    def step(model, opt):
        opt.zero_grad(set_to_none=True)
        model(rt.layout(x)).square().mean().backward()
        opt.step()

    model = rt.prepare(net())
    opt = rt.adam(model.parameters(), lr=1e-2)
    assert opt.defaults["fused"]
    step(model, opt)
    saved = copy.deepcopy(opt.state_dict())
    for state in saved["state"].values():  # as train-state.safetensors stores them
        for k, v in state.items():
            state[k] = v.contiguous()
    again = rt.prepare(net())
    again.load_state_dict(model.state_dict())
    opt2 = rt.adam(again.parameters(), lr=1e-2)
    opt2.load_state_dict(saved)
    step(model, opt)
    step(again, opt2)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# ThreadGuard on made-up step times


def simulate(guard: ThreadGuard, cost, steps: int) -> list[int]:
    """Feed `steps` steps whose time is cost(threads, i); returns the thread count of each step."""
    used, n = [], guard.threads
    for i in range(steps):
        used.append(n)
        n = guard.record(cost(n, i))
    return used


def test_an_idle_machine_keeps_both_threads_after_one_short_trial():
    guard = ThreadGuard(2)
    used = simulate(guard, lambda n, i: 0.10 if n == 2 else 0.16, 200)
    assert guard.best == 2 and used[-150:] == [2] * 150
    assert used.count(1) <= 5  # the first trial: a settling step and three timed ones
    assert guard.switches == 2


def test_one_slow_step_is_not_contention():
    guard = ThreadGuard(2)
    used = simulate(guard, lambda n, i: (0.5 if i == 60 else 0.10) if n == 2 else 0.16, 100)
    assert used[20:] == [2] * 80


def test_busy_from_the_start_settles_on_one_thread_and_retries_rarely():
    guard = ThreadGuard(2, retry_s=30, max_retry_s=240)
    used = simulate(guard, lambda n, i: 3.0 if n == 2 else 0.18, 3000)
    assert used.index(1) <= 6  # warm-up and trial steps on 2 threads first
    retries = [i for i in range(1, len(used)) if used[i] == 2 and used[i - 1] == 1]
    # each retry costs one 3 s step, then waits twice as long (30, 60, 120, 240, 240... s of steps)
    assert 4 <= len(retries) <= 8
    gaps = [b - a for a, b in zip(retries, retries[1:], strict=False)]
    assert gaps == sorted(gaps)
    assert sum(used[i] == 2 for i in range(10, len(used))) <= len(retries) + 1
    wasted = sum(3.0 - 0.18 for i in range(10, len(used)) if used[i] == 2)
    total = sum(3.0 if n == 2 else 0.18 for n in used[10:])
    assert wasted / total < 0.1


def test_contention_mid_run_drops_to_one_thread_and_comes_back_when_it_ends():
    busy = range(100, 400)  # steps during which another process holds a core

    def cost(n, i):
        if i in busy:
            return 3.0 if n == 2 else 0.18
        return 0.10 if n == 2 else 0.16

    guard = ThreadGuard(2, retry_s=30, max_retry_s=240)
    used = simulate(guard, cost, 3000)
    assert used[90:100] == [2] * 10
    assert used[104:395].count(2) <= 6  # two slow steps, then one thread (retries cost one step each)
    back = next(i for i in range(400, len(used)) if used[i:i + 100] == [2] * 100)
    assert (back - 400) * 0.16 <= 240  # the next retry, at most max_retry_s of steps later
    assert used[back:] == [2] * (len(used) - back)


def test_a_mild_slowdown_moves_to_one_thread_only_if_that_is_faster():
    guard = ThreadGuard(2)
    # fp32-like: both threads 2.2x slower when busy, one thread barely affected and faster then
    used = simulate(guard, lambda n, i: (0.22 if i >= 50 else 0.10) if n == 2 else 0.17, 120)
    assert used[-50:] == [1] * 50
    guard = ThreadGuard(2)
    # ...but when one thread is slower still, two are kept
    used = simulate(guard, lambda n, i: (0.22 if i >= 50 else 0.10) if n == 2 else 0.30, 120)
    assert used[-50:] == [2] * 50


def test_the_guard_stays_out_where_threads_were_chosen(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert isinstance(ThreadGuard.for_runtime(Runtime(CPU, "bf16", False)), ThreadGuard)
    assert ThreadGuard.for_runtime(Runtime(torch.device("cuda"), "bf16", False)) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert ThreadGuard.for_runtime(Runtime(CPU, "bf16", False)) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert ThreadGuard.for_runtime(Runtime(CPU, "bf16", False)) is None
