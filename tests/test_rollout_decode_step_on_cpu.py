"""A decode step's per-token-temperature path never waits for the device and has no Python code
per row (the GPU must not wait for its host, nor its host for it).

* No host read: the whole step (the V1 row source's rows, τ_{t-1} from the records, IntroLLM's
  head and draws, the division, the record writes, the anomaly counts) runs on tensors of
  torch's ``meta`` device, which hold no data: any read of a value on the host
  (``.item()``, ``.tolist()``, ``bool(t)``, a copy to the CPU) raises there.
* Loop-free in N: one step at 8 rows and at 256 rows dispatches the same torch operations and
  makes the same Python calls.
"""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

import meta
from meta.base import RowContext, TempDecision, TemperatureStrategy
from rollout.vllm_model import TempoRuntime
from rollout.vllm_rows import BASE_TAU, KEY, V1RowTracker

D = V = 8


@pytest.fixture(scope="module")
def meta_dirichlet():
    """A shape-only kernel for the Beta draw's op, which torch has none of on ``meta``."""
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_sample_dirichlet", lambda alpha, generator=None: torch.empty_like(alpha), "Meta")
    yield
    del lib


def decoding(rows: int, strategy, device: str = "cpu"):
    """(runtime, step, advance) over ``rows`` requests being decoded, as vLLM's runner V1 drives
    them: ``step()`` is one compute_logits, ``advance()`` gives every row its sampled token."""
    tracker = V1RowTracker(None, torch.device(device), False)
    runtime = TempoRuntime(tracker, strategy, max_positions=64)
    runtime.begin(0, 0)
    outputs = [[] for _ in range(rows)]
    tracker.update_state(BatchUpdate(batch_size=rows, removed=[], moved=[], added=[
        (i, SamplingParams(extra_args={KEY: f"r{i}", BASE_TAU: 1.0}), [1], outputs[i])
        for i in range(rows)]))
    hidden = torch.randn(rows, D).to(device)
    logits = torch.randn(rows, V).to(device)

    def advance():
        for o in outputs:
            o.append(1)

    return runtime, lambda: runtime.on_compute_logits(hidden, logits), advance


def introllm(device="cpu"):
    torch.manual_seed(0)
    s = meta.build_strategy("introllm", hidden_size=D)
    s.head.to(device)
    return s


def test_a_decode_step_runs_on_tensors_that_cannot_be_read(meta_dirichlet, monkeypatch):
    s = introllm("meta")
    runtime, step, advance = decoding(16, s, "meta")
    # the strategy's draws take a CPU generator (torch has none for meta); nothing reads it back
    monkeypatch.setattr(runtime, "_generator", lambda device: torch.Generator())
    with torch.inference_mode():
        for _ in range(3):  # position 0 (forced gate), then the keep / draw branches
            out = step()
            advance()
    assert out.device.type == "meta" and out.shape == (16, V)
    assert runtime.records.device.type == "meta" and not runtime.anomalies


class ReadsTheDevice(TemperatureStrategy):
    """What the test above must catch: a strategy whose select reads a value on the host."""

    name = "reads"
    per_token = True

    def select(self, ctx: RowContext) -> TempDecision:
        if bool((ctx.prev_tau > 0).any()):
            return TempDecision(tau=ctx.prev_tau)
        return TempDecision(tau=ctx.base_tau)


def test_the_meta_device_catches_a_host_read():
    _, step, _ = decoding(4, ReadsTheDevice(), "meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        step()


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _step_work(rows: int) -> tuple[Counter, Counter]:
    """(torch ops dispatched in the third decode step over ``rows`` rows, Python calls made in
    the fourth)."""
    _, step, advance = decoding(rows, introllm())
    calls: Counter = Counter()

    def profile(frame, event, arg):
        if event in ("call", "c_call"):
            calls[arg.__qualname__ if event == "c_call" else frame.f_code.co_qualname] += 1

    with torch.inference_mode():
        for _ in range(2):
            step()
            advance()
        with _Ops() as ops:
            step()
        advance()
        sys.setprofile(profile)
        try:
            step()
        finally:
            sys.setprofile(None)
    return ops.ops, calls


def test_a_decode_step_does_the_same_work_for_8_and_for_256_rows():
    _step_work(8)  # torch's first-use set-up out of the way
    ops8, calls8 = _step_work(8)
    ops256, calls256 = _step_work(256)
    assert sum(ops8.values()) > 20 and sum(calls8.values()) > 20  # the step was observed
    assert ops256 == ops8
    assert calls256 == calls8
