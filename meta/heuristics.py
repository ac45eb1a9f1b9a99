"""Heuristic temperature baselines (docs/algorithms.md §4): fixed, linear, staged, EAD and EDT.

* Fixed: one T for everything (TAMPO, arXiv 2602.11779, compares 0.9 / 1.2 / 1.5).
* Linear: T(s) = t_start + (t_end - t_start) * s / (S - 1), default 0.9 -> 1.5 (TAMPO's baseline).
* Staged: a fixed T per training stage, raised between stages (POLARIS: 1.4 -> 1.45 -> 1.5).
* EAD (arXiv 2510.05251): per position t, tau_t = 1.0 for t < 10, else
  max(1 + tau_max - exp(t / d_s), tau_min) with d_s = min(d0 + 5 s, 40000).
* EDT (arXiv 2403.14541): per token, T = t0 * base^(theta / H), H the entropy of the
  untempered next-token distribution, clamped to [tau_min, tau_max].

The first three are per-request (`per_token = False`); EAD and EDT choose a temperature per row
in `select`, through the same path as IntroLLM.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from meta.base import (
    RowContext,
    TempDecision,
    TemperatureStrategy,
    check_positive,
    check_tau_bounds,
)


class FixedTemperature(TemperatureStrategy):
    """One temperature for every prompt, token and step."""

    name = "fixed"

    def __init__(self, temperature: float = 1.0):
        check_positive("temperature", temperature, 1.0)
        self.temperature = float(temperature)

    def temperature_at(self, step: int) -> float:
        return self.temperature


class LinearSchedule(TemperatureStrategy):
    """T(s) = t_start + (t_end - t_start) * s / (S - 1), s clamped to [0, S - 1];
    S = 1 -> t_start."""

    name = "linear"

    def __init__(self, total_steps: int, t_start: float = 0.9, t_end: float = 1.5):
        if int(total_steps) != total_steps or total_steps < 1:
            raise ValueError(f"total_steps ({total_steps}) must be an integer >= 1; "
                             f"set it to the number of training steps, e.g. total_steps=200")
        check_positive("t_start", t_start, 0.9)
        check_positive("t_end", t_end, 1.5)
        self.total_steps, self.t_start, self.t_end = int(total_steps), float(t_start), float(t_end)

    def temperature_at(self, step: int) -> float:
        if self.total_steps == 1:
            return self.t_start
        s = min(max(step, 0), self.total_steps - 1)
        return self.t_start + (self.t_end - self.t_start) * s / (self.total_steps - 1)


class StagedSchedule(TemperatureStrategy):
    """POLARIS-style stages: temperatures[i] from boundaries[i - 1] (inclusive) to boundaries[i].

    `boundaries` are the training steps at which the next stage starts: strictly increasing,
    positive, and one fewer than `temperatures`. Example: temperatures (1.4, 1.45, 1.5),
    boundaries (100, 200) -> steps 0-99 at 1.4, 100-199 at 1.45, 200+ at 1.5.
    """

    name = "staged"

    def __init__(self, boundaries: tuple[int, ...],
                 temperatures: tuple[float, ...] = (1.4, 1.45, 1.5)):
        temperatures, boundaries = tuple(float(t) for t in temperatures), tuple(boundaries)
        if not temperatures:
            raise ValueError("temperatures (()) must list at least one temperature; "
                             "set e.g. temperatures=(1.4, 1.45, 1.5)")
        if min(temperatures) <= 0:
            raise ValueError(f"temperatures {temperatures} must all be > 0; "
                             f"set e.g. temperatures=(1.4, 1.45, 1.5)")
        if len(boundaries) != len(temperatures) - 1:
            raise ValueError(f"boundaries {boundaries} must have len(temperatures) - 1 = "
                             f"{len(temperatures) - 1} entries (the steps where stages 2.. start); "
                             f"e.g. boundaries=(100, 200) for 3 temperatures")
        if any(int(b) != b or b < 1 for b in boundaries) or any(
                b >= c for b, c in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries {boundaries} must be strictly increasing integers >= 1; "
                             f"e.g. boundaries=(100, 200)")
        self.temperatures, self.boundaries = temperatures, tuple(int(b) for b in boundaries)

    def temperature_at(self, step: int) -> float:
        stage = sum(step >= b for b in self.boundaries)
        return self.temperatures[stage]


class EAD(TemperatureStrategy):
    """Entropy-annealing decay by position (arXiv 2510.05251), as used by IntroLLM's baselines.

    tau_t = 1.0 for t < warmup_tokens, else max(1 + tau_max - exp(t / d_s), tau_min),
    d_s = min(d0 + d_per_step * s, d_cap). Defaults are the paper's for ~1.5B models.
    """

    name = "ead"
    per_token = True

    def __init__(self, tau_max: float = 1.2, tau_min: float = 0.1, d0: float = 200.0,
                 warmup_tokens: int = 10, d_per_step: float = 5.0, d_cap: float = 40000.0):
        check_tau_bounds(tau_min, tau_max, 0.1)
        check_positive("d0", d0, 200.0)
        check_positive("d_cap", d_cap, 40000.0)
        if warmup_tokens < 0 or d_per_step < 0:
            raise ValueError(f"warmup_tokens ({warmup_tokens}) and d_per_step ({d_per_step}) must "
                             f"be >= 0; set e.g. warmup_tokens=10, d_per_step=5.0")
        self.tau_max, self.tau_min, self.d0 = float(tau_max), float(tau_min), float(d0)
        self.warmup_tokens = int(warmup_tokens)
        self.d_per_step, self.d_cap = float(d_per_step), float(d_cap)

    def temperature_at(self, step: int) -> float:
        return 1.0  # the warm-up temperature: every response starts at tau = 1.0

    def decay_length(self, step: int) -> float:
        """d_s = min(d0 + d_per_step * s, d_cap)."""
        return min(self.d0 + self.d_per_step * max(step, 0), self.d_cap)

    def select(self, ctx: RowContext) -> TempDecision:
        t = ctx.positions.to(torch.float64)  # (N,), fp64 so exp(t / d_s) is exact enough
        decayed = 1.0 + self.tau_max - torch.exp(t / self.decay_length(ctx.step))
        tau = torch.where(t < self.warmup_tokens, torch.ones_like(t),
                          decayed.clamp_min(self.tau_min))
        return TempDecision(tau=tau.to(torch.float32))


class EDT(TemperatureStrategy):
    """Entropy-based dynamic temperature (arXiv 2403.14541): T = t0 * base^(theta / H), clamped.

    H is the entropy (nats) of softmax(untempered logits) of each row. As H -> 0, theta / H -> inf
    and T -> 0, which the clamp turns into tau_min (no NaN: H is floored at `min_entropy`).
    As H grows, T rises towards t0 (for 0 < base < 1).

    t0 = 0.8 and theta = 1.0 come from a third-party implementation, not the paper; base = 0.8 is
    the paper's N. The clamp range [tau_min, tau_max] = [0.1, 1.5] is (our default): 0.1 matches
    EAD's floor, 1.5 the top of the other strategies' ranges (never reached with base < 1).
    """

    name = "edt"
    per_token = True
    needs_logits = True

    def __init__(self, t0: float = 0.8, theta: float = 1.0, base: float = 0.8,
                 tau_min: float = 0.1,  # (our default)
                 tau_max: float = 1.5,  # (our default)
                 min_entropy: float = 1e-6):  # (our default) floor on H before theta / H
        check_positive("t0", t0, 0.8)
        check_positive("base", base, 0.8)
        check_positive("min_entropy", min_entropy, 1e-6)
        if theta < 0:
            raise ValueError(f"theta ({theta}) must be >= 0; set e.g. theta=1.0")
        check_tau_bounds(tau_min, tau_max, 0.1)
        self.t0, self.theta, self.base = float(t0), float(theta), float(base)
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self.min_entropy = float(min_entropy)

    def temperature_at(self, step: int) -> float:
        return self.t0

    def temperature_from_entropy(self, entropy: Tensor) -> Tensor:
        """(N,) entropy in nats -> (N,) float32 temperature, computed in log space."""
        exponent = self.theta / entropy.to(torch.float64).clamp_min(self.min_entropy)
        tau = torch.exp(math.log(self.t0) + exponent * math.log(self.base))
        return tau.clamp(self.tau_min, self.tau_max).to(torch.float32)

    def select(self, ctx: RowContext) -> TempDecision:
        if ctx.logits is None:
            raise ValueError("EDT needs ctx.logits (N, V) untempered logits; the engine must pass "
                             "them because strategy.needs_logits is True")
        logits = ctx.logits.to(torch.float32)  # (N, V)
        dist = torch.distributions.Categorical(logits=logits, validate_args=False)
        entropy = dist.entropy()  # (N,)
        return TempDecision(tau=self.temperature_from_entropy(entropy))
