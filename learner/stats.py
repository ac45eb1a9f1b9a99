"""The learner's statistics, reduced over micro-batches, mini-batches and data-parallel ranks.

A loss function returns per-micro-batch stats keyed by name; how a key is combined follows from
its kind: ``SUMMED`` keys are already divided by the global denominator (added as they are),
``MAXED`` keys take the maximum, every other key is a token mean (weighted by the micro-batch's
tokens, then divided by the mini-batch's). Every function that all-reduces must be called by
all ranks with the same keys.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from learner import ds_utils
from rollout.trajectory import TrajectoryBatch

SUMMED = ("pg_loss", "kl_loss", "entropy")
"""already divided by the global denominator"""
MAXED = ("ratio_max",)
"""maxima; every other stat is a token mean, weighted by tokens then reduced"""


def accumulate(sums: dict[str, Tensor], stats: dict[str, Tensor], tokens: Tensor) -> None:
    """Add one micro-batch's stats: sums as they are, token means weighted by its tokens, maxima."""
    for k, v in stats.items():
        v = v.detach().double().cpu()
        if k in MAXED:
            sums[k] = torch.maximum(sums[k], v) if k in sums else v
        else:
            w = v if k in SUMMED else v * float(tokens)
            sums[k] = sums[k] + w if k in sums else w


def reduce_ranks(sums: dict[str, Tensor], tokens: float) -> dict[str, float]:
    """All-reduce one mini-batch's accumulated stats over ranks; `tokens` is the mini-batch's
    token count over all ranks."""
    keys = sorted(sums)
    added = [k for k in keys if k not in MAXED]
    maxed = [k for k in keys if k in MAXED]
    s = ds_utils.all_reduce(torch.stack([sums[k] for k in added])) if added else torch.zeros(0)
    mx = (ds_utils.all_reduce(torch.stack([sums[k] for k in maxed]), "max") if maxed
          else torch.zeros(0))
    out = {k: float(v) if k in SUMMED else float(v) / max(tokens, 1.0) for k, v in zip(added, s)}
    out.update({k: float(v) for k, v in zip(maxed, mx)})
    return out


def average(per_mb: list[dict[str, float]], lr: float) -> dict[str, float]:
    """Mean over mini-batches; grad_norm over the applied steps only; skips and steps counted."""
    out = {k: sum(d[k] for d in per_mb) / len(per_mb) for k in per_mb[0]
           if k not in ("grad_norm", "skipped_nonfinite")}
    applied = [d["grad_norm"] for d in per_mb if not d["skipped_nonfinite"]]
    out["grad_norm"] = sum(applied) / len(applied) if applied else float("nan")
    out["skipped_nonfinite"] = sum(d["skipped_nonfinite"] for d in per_mb)
    out["optimizer_steps"] = float(len(applied))
    out["lr"] = lr
    return out


def token_mean(x: Tensor, mask: Tensor) -> float:
    """Token mean of a (B, T) tensor over all ranks' counted tokens."""
    total = float(torch.where(mask, x, torch.zeros_like(x)).sum())
    s = torch.tensor([total, float(mask.sum())], dtype=torch.float64)
    ds_utils.all_reduce(s)
    return float(s[0] / max(float(s[1]), 1.0))


def tau_entropy_stats(batch: TrajectoryBatch, entropy: Tensor) -> dict[str, float]:
    """Entropy of the untempered next-token distribution (token mean) and its Pearson
    correlation with the tau each token was sampled at, over all ranks' tokens (the rows the
    learner trained on). No correlation when tau is constant."""
    mask = batch.response_mask
    x, y = batch.tau[mask].double(), entropy[mask].double()
    s = torch.stack([torch.tensor(float(mask.sum()), dtype=torch.float64), x.sum(), y.sum(),
                     (x * x).sum(), (y * y).sum(), (x * y).sum()])
    n, sx, sy, sxx, syy, sxy = ds_utils.all_reduce(s).tolist()
    out = {"actor/entropy_untempered": sy / max(n, 1.0)}
    var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
    if n > 1 and var_x > 1e-12 * max(1.0, n * sxx) and var_y > 0:
        out["tau/entropy_corr"] = (n * sxy - sx * sy) / math.sqrt(var_x * var_y)
    return out


def mismatch_stats(batch: TrajectoryBatch, old_logp: Tensor) -> dict[str, float]:
    """Rollout-engine vs learner log-prob of the sampled tokens (same tau): should be ~0."""
    mask = batch.response_mask
    diff = (old_logp - batch.logp_rollout).abs()
    worst = torch.where(mask, diff, torch.zeros_like(diff)).max().reshape(1).double()
    return {"actor/rollout_logp_diff_mean": token_mean(diff, mask),
            "actor/rollout_logp_diff_max": float(ds_utils.all_reduce(worst, "max"))}
