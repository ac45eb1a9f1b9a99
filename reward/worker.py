"""``RewardWorker``: what the reward actor runs: score a step's trajectories, then group advantages.

Takes the rollout actors' batches (Ray resolves their refs into this process), concatenates
them, scores every response in the time-limited pool, computes GRPO advantages, and returns the
scored batch (which stays in the object store for the learners) plus a small dict of rollout
metrics for the driver. It also writes rollout dumps (per-token τ) for later analysis.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import torch

from learner.core_algos import compute_grpo_advantages
from reward.pool import RewardPool
from rollout.trajectory import TrajectoryBatch


class RewardWorker:
    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0, format_weight: float = 0.0,
                 norm_adv_by_std: bool = True, pad_id: int = 0, random_control: bool = False,
                 seed: int = 0):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.random_control, self.seed = random_control, seed
        self.pool = RewardPool(num_workers=num_workers, timeout_s=timeout_s,
                               format_weight=format_weight)
        self.norm_adv_by_std = norm_adv_by_std
        self.pad_id = pad_id

    def score(self, *batches: TrajectoryBatch) -> tuple[TrajectoryBatch, dict]:
        """(the batch with rewards and advantages, rollout metrics)."""
        t0 = time.perf_counter()
        if len(batches) > 1:
            batch = TrajectoryBatch.concat(list(batches), self.pad_id)
        else:
            batch = batches[0]
        batch.validate()
        items = list(zip(batch.tasks, batch.response_texts, batch.answers, batch.metas))
        rewards, pool_stats = self.pool.score_batch(items)
        batch.rewards = torch.tensor(rewards, dtype=torch.float32)
        metrics = rollout_metrics(batch)  # the verifier's scores, control or not
        if self.random_control:
            batch.rewards = coin_flips(batch.rewards, self.seed, batch.step)
            metrics["reward/random_control_mean"] = batch.rewards.mean().item()
        batch.advantages = compute_grpo_advantages(batch.rewards, batch.group_index,
                                                   self.norm_adv_by_std)
        metrics.update({f"reward/{k}": float(v) for k, v in pool_stats.items()})
        metrics["timing_s/reward"] = time.perf_counter() - t0
        metrics["rollout/policy_version"] = float(batch.policy_version)
        for key in ("gen_s", "gen_tokens"):
            metrics[f"rollout/{key}"] = sum(float(b.stats.get(key, 0.0)) for b in batches)
        return batch.validate(), metrics

    def score_texts(self, items: list[tuple]) -> list[float]:
        """Rewards of (task, response, gold, meta) items (evaluation)."""
        rewards, _ = self.pool.score_batch(items)
        return rewards

    def dump(self, batch: TrajectoryBatch, path: str, tokenizer_path: str | None = None) -> str:
        """Write one JSON line per response: tokens, per-token τ (and IntroLLM's c, z), reward."""
        tok = _tokenizer(tokenizer_path) if tokenizer_path else None
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp"
        rewards, advantages = batch.rewards, batch.advantages
        with open(tmp, "w") as f:
            for i in range(len(batch)):
                n = int(batch.response_lengths[i])
                ids = batch.response_ids[i, :n].tolist()
                row = {"step": batch.step, "problem_id": batch.problem_ids[i],
                       "task": batch.tasks[i], "level": int(batch.level[i]),
                       "group": int(batch.group_index[i]),
                       "reward": float(rewards[i]) if rewards is not None else None,
                       "advantage": float(advantages[i]) if advantages is not None else None,
                       "finish_reason": batch.finish_reasons[i], "text": batch.response_texts[i],
                       "token_ids": ids, "tau": [round(x, 5) for x in batch.tau[i, :n].tolist()]}
                if tok is not None:
                    row["tokens"] = [tok.decode([t]) for t in ids]
                if batch.gate is not None:
                    row["gate"] = batch.gate[i, :n].tolist()
                    row["z"] = [round(x, 5) for x in batch.z[i, :n].tolist()]
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        self.pool.close()


@functools.lru_cache(maxsize=2)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def coin_flips(rewards: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """The random-reward control's rewards: one Bernoulli(p) draw per response, p = the mean of
    the verifier's `rewards` for the batch, seeded by (seed, step) so a step repeats exactly."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2 ** 63))
    p = torch.full_like(rewards, float(rewards.mean()))
    return torch.bernoulli(p, generator=g)


def rollout_metrics(batch: TrajectoryBatch) -> dict[str, float]:
    """verl-named rollout metrics plus the temperature statistics of docs/algorithms.md §5."""
    mask = batch.response_mask
    lengths = mask.sum(-1).float()
    rewards = batch.rewards
    tau = batch.tau[mask]
    out = {
        "critic/score/mean": rewards.mean().item(),
        "critic/score/max": rewards.max().item(),
        "critic/score/min": rewards.min().item(),
        "response_length/mean": lengths.mean().item(),
        "response_length/max": lengths.max().item(),
        "response_length/clip_ratio": sum(r == "length" for r in batch.finish_reasons) / len(batch),
        "frac_reward_zero_std": _frac_zero_std(rewards, batch.group_index),
        "tau/mean": tau.mean().item(), "tau/std": tau.std().item() if tau.numel() > 1 else 0.0,
        "tau/min": tau.min().item(), "tau/max": tau.max().item(),
    }
    for q in (0.1, 0.5, 0.9):
        out[f"tau/q{int(q * 100)}"] = torch.quantile(tau, q).item()
    if batch.gate is not None:
        out["tau/gate_rate"] = batch.gate[mask].mean().item()
    for level in sorted(set(batch.level.tolist())):
        rows = batch.level == level
        out[f"tau/mean_L{level}"] = batch.tau[mask & rows[:, None]].mean().item()
        out[f"critic/score/mean_L{level}"] = rewards[rows].mean().item()
    return out


def _frac_zero_std(rewards: torch.Tensor, group_index: torch.Tensor) -> float:
    """TRL's frac_reward_zero_std: share of groups whose rewards are all equal (no signal).

    Tested as max == min, the rule that gives such a group advantage 0 (a float32 std of equal
    non-binary rewards can be ~1e-8, not 0)."""
    groups = group_index.unique()
    zero = sum(bool(r.max() == r.min()) for r in (rewards[group_index == g] for g in groups))
    return zero / len(groups)
