"""TAMPO: temperature as a categorical meta-policy over K candidates (arXiv 2602.11779, ICLR 2026).

docs/algorithms.md §3. Per training step:

1. `plan` draws T from pi_{s-1} by nucleus sampling (top-p 0.7; top_p = 0 means argmax), one
   draw for the whole step (granularity "step", our reading) or one per prompt ("prompt").
   During the first `warmup_steps` updates T is drawn uniformly from the candidates.
2. The learner computes l_k(i), the length-normalised log-likelihood of trajectory i under each
   candidate T_k, from the logits of the old-log-prob pass: `learner.logprobs.tampo_loglik`.
3. `update(loglik, advantages)`: l_hat(i) = sparsemax(l(i)); temperature advantage
   adv(i, k) = l_hat_k(i) * A_i, averaged over the batch; EMA with rate alpha; pi = min-max
   normalised EMA divided by its sum (uniform if max == min).

State (EMA, pi, number of updates) round-trips exactly through `state_dict`.
Dimension vocabulary: B responses, P prompts, K candidate temperatures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta.base import TemperatureStrategy

DEFAULT_CANDIDATES = tuple(round(0.6 + 0.1 * k, 1) for k in range(10))  # 0.6, 0.7, ..., 1.5


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection of x onto the probability simplex along `dim` (Martins & Astudillo
    2016).

    Exact sort-based algorithm: sort descending z_(1) >= ... >= z_(K);
    k* = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}; threshold = (sum_{j<=k*} z_(j) - 1) / k*;
    p = max(x - threshold, 0). Output sums to 1 along `dim` and is shift-invariant.
    """
    z_sorted, _ = torch.sort(x, dim=dim, descending=True)
    cumsum = z_sorted.cumsum(dim)
    shape = [1] * x.dim()
    shape[dim] = x.shape[dim]
    k = torch.arange(1, x.shape[dim] + 1, device=x.device, dtype=x.dtype).view(shape)  # 1..K
    support = 1 + k * z_sorted > cumsum  # a prefix of True along dim
    k_star = support.sum(dim=dim, keepdim=True).clamp_min(1)  # k=1 is always in the support
    threshold = (cumsum.gather(dim, k_star - 1) - 1) / k_star.to(x.dtype)
    return (x - threshold).clamp_min(0)


def nucleus_sample(probs: Tensor, top_p: float, num_samples: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """Draw `num_samples` indices from the top-p nucleus of `probs` (K,), with replacement.

    The nucleus is the shortest prefix of the descending-sorted probabilities whose mass reaches
    top_p (the most likely index is always kept, so top_p = 0 is argmax; ties keep the lowest
    index). Returns (num_samples,) long.
    """
    sorted_p, order = torch.sort(probs, descending=True, stable=True)  # (K,)
    if top_p <= 0:  # argmax, without an RNG draw
        return order[:1].expand(num_samples).clone()
    mass_before = sorted_p.cumsum(0) - sorted_p
    keep = mass_before < top_p
    keep[0] = True
    kept = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
    idx = torch.multinomial(kept, num_samples, replacement=True, generator=generator)
    return order[idx]


class TAMPO(TemperatureStrategy):
    """Categorical meta-policy pi over `candidates`, learned from trajectory likelihoods."""

    name = "tampo"

    def __init__(self, candidates: tuple[float, ...] = DEFAULT_CANDIDATES, top_p: float = 0.7,
                 ema_alpha: float = 0.05,
                 warmup_steps: int = 5,  # (our default) uniform draws for the first 5 updates
                 granularity: str = "step"):  # (our default) "step": one T for all prompts
        candidates = tuple(float(t) for t in candidates)
        if not candidates or len(set(candidates)) != len(candidates):
            raise ValueError(f"candidates {candidates} must be a non-empty list of distinct "
                             f"temperatures; set e.g. candidates={DEFAULT_CANDIDATES}")
        if min(candidates) <= 0:
            raise ValueError(f"candidates {candidates} must all be > 0; "
                             f"set e.g. candidates={DEFAULT_CANDIDATES}")
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p ({top_p}) must be in [0, 1] (0 = argmax); set e.g. top_p=0.7")
        if not 0.0 < ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha ({ema_alpha}) must be in (0, 1]; set e.g. ema_alpha=0.05")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be >= 0; set e.g. warmup_steps=5")
        if granularity not in ("step", "prompt"):
            raise ValueError(f"granularity ({granularity!r}) must be 'step' or 'prompt'; "
                             f"set e.g. granularity='step'")
        self.candidates = torch.tensor(candidates, dtype=torch.float64)  # (K,)
        self.top_p, self.ema_alpha = float(top_p), float(ema_alpha)
        self.warmup_steps, self.granularity = int(warmup_steps), granularity
        k = len(candidates)
        self.ema = torch.zeros(k, dtype=torch.float64)  # A_bar_0 = 0, (K,)
        self.pi = torch.full((k,), 1.0 / k, dtype=torch.float64)  # (K,)
        self.num_updates = 0

    @property
    def in_warmup(self) -> bool:
        return self.num_updates < self.warmup_steps

    def plan(self, step: int, num_prompts: int, generator: torch.Generator | None = None) -> Tensor:
        """(P,) float32 temperature per prompt: uniform during warm-up, else top-p from pi."""
        n = 1 if self.granularity == "step" else num_prompts
        if self.in_warmup:
            idx = torch.randint(len(self.candidates), (n,), generator=generator)
        else:
            idx = nucleus_sample(self.pi, self.top_p, n, generator)
        temps = self.candidates[idx].to(torch.float32)  # (n,)
        return temps.expand(num_prompts).clone() if n == 1 else temps

    def update(self, loglik: Tensor, advantages: Tensor,
               num_rows: int | None = None) -> dict[str, Tensor]:
        """Move the EMA and pi from one step's trajectories.

        loglik: (B, K) length-normalised log-likelihood of each trajectory under each candidate
        (`learner.logprobs.tampo_loglik`); advantages: (B,) GRPO advantage per trajectory.
        num_rows: the step's trajectory count when rows with advantage 0 (which add nothing)
        were left out of `loglik` (default: B).
        Returns detached (K,) vectors `pi`, `ema_advantage`, `batch_advantage` and scalars
        `expected_temperature`, `pi_entropy`.
        """
        if loglik.dim() != 2 or loglik.shape[1] != len(self.candidates):
            raise ValueError(f"loglik has shape {tuple(loglik.shape)} but must be (B, K) with "
                             f"K = {len(self.candidates)} candidates")
        if advantages.shape != loglik.shape[:1]:
            raise ValueError(f"advantages has shape {tuple(advantages.shape)} but must be (B,) = "
                             f"({loglik.shape[0]},), one GRPO advantage per trajectory")
        l_hat = sparsemax(loglik.detach().to(torch.float64).cpu(), dim=-1)  # (B, K)
        n = loglik.shape[0] if num_rows is None else num_rows
        if n < loglik.shape[0]:
            raise ValueError(f"num_rows ({n}) is below the {loglik.shape[0]} trajectories given; "
                             "pass the step's full trajectory count or leave it None")
        adv = advantages.detach().to(torch.float64).cpu()
        batch_adv = (l_hat * adv[:, None]).sum(0) / max(n, 1)
        self.ema = (1 - self.ema_alpha) * self.ema + self.ema_alpha * batch_adv
        self.pi = self.policy_from_ema(self.ema)
        self.num_updates += 1
        return {
            "pi": self.pi.clone(), "ema_advantage": self.ema.clone(), "batch_advantage": batch_adv,
            "expected_temperature": (self.pi * self.candidates).sum(),
            "pi_entropy": -torch.special.xlogy(self.pi, self.pi).sum(),
        }

    @staticmethod
    def policy_from_ema(ema: Tensor) -> Tensor:
        """Min-max normalise the (K,) EMA, then divide by the sum; uniform if max == min."""
        spread = ema.max() - ema.min()
        scaled = (ema - ema.min()) / torch.where(spread > 0, spread, torch.ones_like(spread))
        uniform = torch.full_like(ema, 1.0 / ema.numel())
        return torch.where(spread > 0, scaled / scaled.sum(), uniform)

    def temperature_summary(self, step: int) -> dict:
        """pi over the candidates and its expected temperature."""
        return {"candidates": self.candidates.tolist(), "pi": self.pi.tolist(),
                "temperature": float((self.pi * self.candidates).sum())}

    def state_dict(self) -> dict:
        return {"candidates": self.candidates.clone(), "ema": self.ema.clone(),
                "pi": self.pi.clone(), "num_updates": self.num_updates}

    def load_state_dict(self, sd: dict) -> None:
        if not torch.equal(sd["candidates"].to(torch.float64), self.candidates):
            raise ValueError(f"checkpoint candidates {sd['candidates'].tolist()} differ from this "
                             f"strategy's {self.candidates.tolist()}; build TAMPO with the same "
                             f"candidates")
        self.ema = sd["ema"].to(torch.float64).clone()
        self.pi = sd["pi"].to(torch.float64).clone()
        self.num_updates = int(sd["num_updates"])
