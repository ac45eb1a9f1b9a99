"""The one interface every sampling-temperature strategy implements (docs/algorithms.md §2-§4).

A strategy answers two questions for the rollout engines:

* `plan(step, num_prompts)` -> (P,) base temperature per prompt for this training step (the
  per-request temperature: a schedule value, TAMPO's draw, or the start temperature of a
  per-token strategy);
* `select(ctx)` -> `TempDecision` for the N rows being sampled right now (one row = one
  sequence's next token). Every strategy goes through this single per-token path; scalar
  strategies simply return `ctx.base_tau`.

Learned state lives behind `update` / `state_dict` / `load_state_dict`, so a checkpoint of the
strategy is a plain dict of tensors and Python numbers. Nothing here knows about configs, Ray,
vLLM or logging.

Dimension vocabulary: P prompts, N rows being sampled at once, d hidden size, V vocab.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RowContext:
    """What a strategy may look at when choosing the temperature of the N rows sampled now."""

    positions: Tensor
    """(N,) long: 0-based index, within the response, of the token being generated"""
    prev_tau: Tensor
    """(N,) float: temperature used at the previous generated position (position 0: base_tau)"""
    base_tau: Tensor
    """(N,) float: the per-request temperature that `plan` chose for this row's prompt"""
    step: int = 0
    """training step (0-based), for schedules such as EAD"""
    hidden: Tensor | None = None
    """(N, d) final post-norm hidden state; required when `strategy.needs_hidden`"""
    logits: Tensor | None = None
    """(N, V) untempered logits; required when `strategy.needs_logits`"""
    generator: torch.Generator | None = None
    """RNG for the strategy's own draws (IntroLLM's gate and Beta); None = global RNG"""


@dataclass
class TempDecision:
    """The temperature chosen for each of the N rows, plus what a learned strategy must record."""

    tau: Tensor
    """(N,) float32: temperature that divides this row's logits"""
    gate: Tensor | None = None
    """(N,) float32 in {0, 1}: IntroLLM's c_t (1 = a new temperature was drawn), else None"""
    z: Tensor | None = None
    """(N,) float32 in (0, 1): IntroLLM's Beta draw (0 where gate == 0), else None"""
    logp_phi: Tensor | None = None
    """(N,) float32: behaviour log pi_phi(a_t) of the drawn action, else None"""


class TemperatureStrategy:
    """Base class: a stateless scalar strategy only needs to implement `temperature_at(step)`.

    Every strategy can be rebuilt in another process from `spec()`, a plain dict (its name and
    constructor arguments: numbers, strings, lists), with `meta.registry.strategy_from_spec`;
    a rollout engine whose model runs in worker processes sends that, never the object.
    """

    name: str = "base"
    per_token: bool = False
    """False: tau is constant per request (fixed / linear / staged / tampo)"""
    needs_hidden: bool = False
    needs_logits: bool = False
    head = None
    """the learned temperature head of a strategy that owns one, else None: a
    `meta.introllm.TemperatureHead` over the model's hidden size (vLLM's model holds one of that
    layout; the learner trains a copy by its `log_prob` of the recorded gate and z)"""
    learns_head: bool = False
    """True: every instance owns a `head` that the learner trains in phi phases, so its `meta`
    config takes the phi-phase settings (`learner.config.PhiTrainingConfig`) too"""
    candidates = None
    """(K,) candidate temperatures the learners score every trajectory under (TAMPO's l_k,
    which `update` learns from), else None"""
    temperature_modes: tuple[str, ...] = ()
    """the modes `set_temperature_mode` accepts ("sample": draw, "mean": the mean action, the
    evaluation option `eval.temperature_mode=mean`); empty: no such option, it samples as in
    training"""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        # bind_partial: copy/pickle call __new__ without arguments, then restore __dict__
        bound = inspect.signature(cls.__init__).bind_partial(obj, *args, **kwargs)
        bound.apply_defaults()
        obj._init_kwargs = {k: v for k, v in list(bound.arguments.items())[1:]}
        return obj

    def spec(self) -> dict:
        """{"name": ..., "kwargs": {...}}: what rebuilds this strategy (learned state excluded;
        a head's weights travel with the model's, see `rollout.vllm_engine`)."""
        return {"name": self.name, "kwargs": {k: _plain(v) for k, v in self._init_kwargs.items()}}

    def temperature_summary(self, step: int) -> dict:
        """What this strategy samples at after `step` training steps, as plain data for an
        exported model's policy file: {"temperature": T} for a per-request schedule (its value
        at `step`), {} when there is no single number (a per-token rule: its `spec` says it)."""
        try:
            return {"temperature": float(self.temperature_at(step))}
        except NotImplementedError:
            return {}

    def set_temperature_mode(self, mode: str) -> None:
        """Make `select` draw in `mode` (one of `temperature_modes`) from now on; `spec()` must
        carry the mode (vLLM's workers rebuild the strategy from it)."""
        raise ValueError(f"{type(self).__name__} has no temperature mode (got {mode!r}); only "
                         f"strategies with temperature_modes accept one")

    def temperature_at(self, step: int) -> float:
        """The scalar temperature of a per-request schedule at training `step`."""
        raise NotImplementedError(f"{type(self).__name__} must implement plan() or "
                                  f"temperature_at()")

    def plan(self, step: int, num_prompts: int, generator: torch.Generator | None = None) -> Tensor:
        """(P,) float32 base temperature per prompt for training `step`."""
        return torch.full((num_prompts,), self.temperature_at(step), dtype=torch.float32)

    def select(self, ctx: RowContext) -> TempDecision:
        """Per-row temperatures; per-request strategies keep the planned base temperature."""
        return TempDecision(tau=ctx.base_tau.to(torch.float32))

    def update(self, **kwargs) -> dict[str, Tensor]:
        """Learn from a finished step; stateless strategies do nothing and report nothing."""
        return {}

    def state_dict(self) -> dict:
        """The learned state; a head-owning strategy's default: its head's weights."""
        return {} if self.head is None else self.head.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        if self.head is not None:
            self.head.load_state_dict(sd)
        elif sd:
            raise ValueError(f"{type(self).__name__} has no state but got keys {sorted(sd)}; "
                             f"load a checkpoint written by the same strategy")


def _plain(value):
    """A constructor argument as plain data (tuples -> lists) for a serialised spec."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"strategy argument {value!r} ({type(value).__name__}) is not plain data; "
                    f"constructor arguments must be numbers, strings or lists of them")


def check_positive(name: str, value: float, example: float) -> None:
    """Raise unless value > 0, naming the value, the rule and a fix."""
    if not value > 0:
        raise ValueError(f"{name} ({value}) must be > 0; set e.g. {name}={example}")


def check_tau_bounds(tau_min: float, tau_max: float, low_example: float) -> None:
    """Temperature bounds must satisfy 0 < tau_min < tau_max."""
    check_positive("tau_min", tau_min, low_example)
    if not tau_min < tau_max:
        raise ValueError(f"tau_min ({tau_min}) must be < tau_max ({tau_max}); "
                         f"set e.g. tau_min={low_example}")
