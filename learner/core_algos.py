"""GRPO maths with per-token temperature: advantages, PPO-clip loss, aggregation, KL
(docs/algorithms.md §1).

Pure functions in the style of verl's `trainer/ppo/core_algos.py`; with tau_t = T everywhere they
reproduce verl's `compute_grpo_outcome_advantage`, `compute_policy_loss_vanilla` (its dual-clip
is `clip_ratio_c`, off by default here, 3.0 in verl: see `learner.clip_ratio_c`), `agg_loss` and
`kl_penalty("low_var_kl")`.
Departures, all deliberate:

* padded positions are removed with `torch.where` *before* exp / mul, so garbage (inf, NaN) in
  padding changes neither the loss nor its gradient (verl multiplies by the mask);
* `seq-mean-token-sum-norm` is sum_i sum_t L_it / (B * max_len): B the number of responses (every
  row, empty ones included, or the caller's global `denominator`), max_len the padded response
  width (the caller's constant, default T), i.e. Dr.GRPO's mean over responses of the token sums
  over a constant length. verl's `agg_loss` divides the same token sum by its loss_scale_factor
  only (default `loss_mask.shape[-1]`, our max_len), with no 1/B: ours is verl's value / B, the
  same gradient direction at 1/B the scale (under AdamW that shows through grad_clip and eps).
* IntroLLM's phi-phase loss is `policy_loss` over temperature-action log-probs
  (`phi_policy_loss`): one copy of the clip maths for both phases.

Dimension vocabulary: B responses, T response tokens. `response_mask` (B, T): True/1 = counts.
Stats are detached tensors; formatting and `.item()` happen at log time, not here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
LOG_RATIO_CLAMP = 20.0  # verl clamps log(ratio) to [-20, 20] before exp


def compute_grpo_advantages(rewards: Tensor, group_index: Tensor, norm_by_std: bool = True,
                            eps: float = 1e-6) -> Tensor:
    """(B,) outcome advantage A_i = (r_i - mean_g) / (std_g + eps), or r_i - mean_g (Dr.GRPO).

    rewards (B,) one scalar per response; group_index (B,) long, equal for responses of the same
    prompt (any integers, not necessarily contiguous). std is torch.std (unbiased, n - 1), as in
    verl. A group of size 1 uses mean 0 and std 1, exactly like verl, so a lone response gets
    A = r / (1 + eps) (or r without std normalisation).
    A group (of 2 or more) whose rewards are all equal gets exactly 0: float32 rounding of its
    mean (e.g. seven rewards of 0.9 with reward.format_weight > 0) would otherwise leave a
    ~1e-8 difference that (std ~1e-8 + eps) turns into |A| ~0.05, a gradient from no signal.
    """
    _, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    r = rewards.detach() if rewards.is_floating_point() else rewards.detach().float()
    n = counts.to(r.dtype)  # (groups,)
    sums = torch.zeros_like(n).index_add_(0, inverse, r)
    mean = sums / n
    sq_dev = torch.zeros_like(n).index_add_(0, inverse, (r - mean[inverse]) ** 2)
    std = torch.sqrt(sq_dev / (n - 1).clamp_min(1))
    single = counts == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    high = torch.full_like(n, -math.inf).scatter_reduce(0, inverse, r, "amax")
    low = torch.full_like(n, math.inf).scatter_reduce(0, inverse, r, "amin")
    equal = ((high == low) & ~single)[inverse]  # (B,)
    centred = torch.where(equal, torch.zeros_like(r), r - mean[inverse])  # (B,)
    return centred / (std[inverse] + eps) if norm_by_std else centred


def masked_mean(x: Tensor, response_mask: Tensor) -> Tensor:
    """Mean of x over counted positions (0 if none); garbage at uncounted positions is ignored."""
    mask = response_mask.bool()
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.sum().clamp_min(1)


def agg_loss(loss_mat: Tensor, response_mask: Tensor, mode: str = "token-mean",
             max_len: int | None = None, denominator: float | Tensor | None = None) -> Tensor:
    """Aggregate a (B, T) per-token loss into a scalar.

    denominator: the number of units averaged over in the WHOLE batch (tokens for token-mean,
    sequences otherwise) when this call sees only a micro-batch or one rank's slice; summing the
    calls' results then gives exactly the full-batch value. None = this call's own count.

    token-mean: sum over counted tokens / number of counted tokens (DAPO; verl default).
    seq-mean-token-mean: mean over sequences with >= 1 counted token of each one's token mean
        (original GRPO).
    seq-mean-token-sum-norm: sum_i sum_t loss / (B * max_len) (Dr.GRPO), B = this call's rows
        (empty ones included) or `denominator`; max_len defaults to T, as verl's
        loss_scale_factor does. verl divides by that factor only (no 1/B; module doc).
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; supported: {list(LOSS_AGG_MODES)}")
    mask = response_mask.bool()
    loss_mat = torch.where(mask, loss_mat, torch.zeros_like(loss_mat))
    if mode == "token-mean":
        return loss_mat.sum() / (mask.sum().clamp_min(1) if denominator is None else denominator)
    seq_sum = loss_mat.sum(-1)  # (B,)
    if mode == "seq-mean-token-mean":
        tokens = mask.sum(-1)  # (B,)
        seq_mean = seq_sum / tokens.clamp_min(1)
        count = (tokens > 0).sum().clamp_min(1) if denominator is None else denominator
        return seq_mean.sum() / count
    max_len = loss_mat.shape[-1] if max_len is None else max_len
    if max_len < 1:
        raise ValueError(f"max_len ({max_len}) must be >= 1; pass the maximum response length")
    count = loss_mat.shape[0] if denominator is None else denominator
    return seq_sum.sum() / (count * max_len)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): exp(d) - d - 1 with d = ref - logp.

    As verl's `low_var_kl`: d clamped to [-20, 20], the result clamped to [-10, 10].
    """
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)


def _broadcast_advantages(advantages: Tensor, like: Tensor) -> Tensor:
    if advantages.dim() == 1:
        advantages = advantages[:, None]  # (B, 1)
    return advantages.expand_as(like)  # (B, T)


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, response_mask: Tensor,
                clip_low: float = 0.2, clip_high: float = 0.28, loss_agg_mode: str = "token-mean",
                max_len: int | None = None, rollout_logp: Tensor | None = None,
                tis_cap: float | None = None, ref_logp: Tensor | None = None,
                kl_coef: float = 0.0, entropy: Tensor | None = None,
                entropy_coef: float = 0.0,
                denominator: float | Tensor | None = None,
                clip_ratio_c: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO-clip with asymmetric clip:
    L_t = -min(rho_t A, clip(rho_t, 1 - clip_low, 1 + clip_high) A).

    logp, old_logp, rollout_logp, ref_logp, entropy: (B, T), each computed with the temperature
    that sampled the token; advantages (B,) or (B, T); response_mask (B, T).
    TIS (verl convention): with rollout_logp and tis_cap, each token's loss is multiplied by the
    detached weight min(exp(old_logp - rollout_logp), tis_cap).
    KL: with ref_logp and kl_coef != 0, adds kl_coef * agg(kl_k3(logp, ref_logp)).
    Entropy bonus: with entropy and entropy_coef != 0, subtracts entropy_coef * agg(entropy).
    denominator: see `agg_loss` (micro-batches / ranks: their losses then sum to the batch's).
    Dual-clip (verl's `clip_ratio_c`, arXiv 1912.09729): with clip_ratio_c = c (> 1), tokens with
    A < 0 get L_t = min(L_t, -c A), so a huge ratio on a negative-advantage token adds at most
    -c A (and no gradient); A >= 0 is unaffected, before the TIS weight as in verl. None = off:
    the loss is the plain PPO-clip above, bit for bit.
    Returns (loss scalar, stats of detached scalars: pg_loss, pg_clipfrac, ppo_kl, ratio_mean,
    ratio_max, and tis_weight_mean / tis_clipfrac / pg_clipfrac_lower (the share of tokens the
    dual-clip caps, verl's name) / kl_loss / entropy when used).
    """
    if tis_cap is not None and not tis_cap > 0:
        raise ValueError(f"tis_cap ({tis_cap}) must be > 0 (or None to disable TIS); "
                         f"set e.g. tis_cap=2.0")
    if not (0 <= clip_low < 1 and clip_high >= 0):
        raise ValueError(f"clip_low ({clip_low}) must be in [0, 1) and clip_high ({clip_high}) "
                         f">= 0; set e.g. clip_low=0.2, clip_high=0.28")
    if clip_ratio_c is not None and not clip_ratio_c > 1:
        raise ValueError(f"clip_ratio_c ({clip_ratio_c}) must be > 1 (or None to disable the "
                         f"dual-clip); set e.g. clip_ratio_c=3.0")
    mask = response_mask.bool()
    zero = torch.zeros_like(logp)
    adv = torch.where(mask, _broadcast_advantages(advantages, logp).to(logp.dtype), zero)
    log_ratio = torch.where(mask, logp - old_logp.detach(), zero).clamp(-LOG_RATIO_CLAMP,
                                                                        LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    pg_losses = torch.maximum(pg_unclipped, pg_clipped)  # (B, T)
    stats: dict[str, Tensor] = {}
    if clip_ratio_c is not None:
        pg_capped = -adv * clip_ratio_c
        negative = adv < 0
        stats["pg_clipfrac_lower"] = masked_mean((negative & (pg_losses > pg_capped)).float(), mask)
        pg_losses = torch.where(negative, torch.minimum(pg_losses, pg_capped), pg_losses)
    if rollout_logp is not None and tis_cap is not None:
        tis_log = torch.where(mask, old_logp - rollout_logp, zero).detach()
        tis_weight = torch.exp(tis_log).clamp(max=tis_cap)
        pg_losses = pg_losses * tis_weight
        stats["tis_weight_mean"] = masked_mean(tis_weight, mask)
        stats["tis_clipfrac"] = masked_mean((tis_log > math.log(tis_cap)).float(), mask)
    pg_loss = agg_loss(pg_losses, mask, loss_agg_mode, max_len, denominator)
    loss = pg_loss
    if ref_logp is not None and kl_coef != 0.0:
        kl = kl_k3(torch.where(mask, logp, zero), torch.where(mask, ref_logp, zero))
        kl_loss = agg_loss(kl, mask, loss_agg_mode, max_len, denominator)
        loss = loss + kl_coef * kl_loss
        stats["kl_loss"] = kl_loss.detach()
    if entropy is not None and entropy_coef != 0.0:
        ent = agg_loss(entropy, mask, loss_agg_mode, max_len, denominator)
        loss = loss - entropy_coef * ent
        stats["entropy"] = ent.detach()
    stats.update(_clip_stats(log_ratio.detach(), pg_unclipped.detach(), pg_clipped.detach(), mask))
    stats["pg_loss"] = pg_loss.detach()
    return loss, stats


def _clip_stats(log_ratio: Tensor, pg_unclipped: Tensor, pg_clipped: Tensor,
                mask: Tensor) -> dict[str, Tensor]:
    """verl's names: pg_clipfrac (clipped term active), ppo_kl (mean of old - new log-prob)."""
    ratio = torch.exp(log_ratio)
    return {
        "pg_clipfrac": masked_mean((pg_clipped > pg_unclipped).float(), mask),
        "ppo_kl": masked_mean(-log_ratio, mask),
        "ratio_mean": masked_mean(ratio, mask),
        "ratio_max": torch.where(mask, ratio, torch.zeros_like(ratio)).max(),
    }


def phi_policy_loss(new_logp_phi: Tensor, old_logp_phi: Tensor, advantages: Tensor,
                    response_mask: Tensor, clip_low: float = 0.2, clip_high: float = 0.28,
                    loss_agg_mode: str = "token-mean", max_len: int | None = None,
                    denominator: float | Tensor | None = None,
                    clip_ratio_c: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """IntroLLM phi-phase: GRPO on the temperature actions (docs/algorithms.md §2).

    Exactly `policy_loss` with rho_t = exp(log pi_phi,new(a_t) - log pi_phi,old(a_t)): same
    advantage, clip (dual-clip included) and aggregation. new_logp_phi (B, T) from
    `TemperatureHead.log_prob` on detached hidden states (backbone frozen); old_logp_phi (B, T)
    the recorded behaviour log-probs.
    """
    return policy_loss(new_logp_phi, old_logp_phi, advantages, response_mask, clip_low, clip_high,
                       loss_agg_mode, max_len, denominator=denominator, clip_ratio_c=clip_ratio_c)
