"""``TrajectoryBatch``: the one schema trajectories have between every stage.

Rollout engines build it, the reward worker (``reward/worker.py``) fills ``rewards`` and the GRPO
``advantages``, the learners read it. ``validate()`` is called at each stage boundary; it checks
shapes, masks and the per-token temperature record (one τ per generated token, every τ
finite and > 0).

Layout (B responses, Lp prompt tokens, T response tokens):
- prompts are LEFT-padded, responses RIGHT-padded, so ``cat([prompt_ids, response_ids], 1)`` is
  one contiguous sequence per row and response token t sits at column Lp + t;
- ``response_mask`` is True on generated tokens (the EOS token, when generated, counts);
- per-token fields are 0 where ``response_mask`` is False.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

_PER_TOKEN = ("tau", "logp_rollout", "gate", "z", "logp_phi")
_PER_RESPONSE = ("group_index", "level", "base_tau", "rewards", "advantages")
_LISTS = ("problem_ids", "tasks", "answers", "metas", "finish_reasons", "response_texts")


class SchemaError(ValueError):
    """A TrajectoryBatch breaks its schema; the message names the field and the rule."""


@dataclass
class TrajectoryBatch:
    prompt_ids: Tensor
    """(B, Lp) long, left-padded with pad_id"""
    prompt_mask: Tensor
    """(B, Lp) bool, True on real prompt tokens"""
    response_ids: Tensor
    """(B, T) long, right-padded"""
    response_mask: Tensor
    """(B, T) bool, True on generated tokens"""
    tau: Tensor
    """(B, T) float32: the temperature that sampled each token"""
    logp_rollout: Tensor
    """(B, T) float32: the engine's log_softmax(z_t / tau_t)[y_t]"""
    group_index: Tensor
    """(B,) long: responses to the same prompt share a group index"""
    level: Tensor
    """(B,) long: difficulty level (0 = unknown)"""
    base_tau: Tensor
    """(B,) float32: the per-request temperature the strategy planned"""
    problem_ids: list[str]
    tasks: list[str]
    answers: list[str]
    metas: list[dict]
    finish_reasons: list[str]
    """'stop' (EOS) or 'length' (max_new_tokens)"""
    response_texts: list[str]
    step: int = 0
    policy_version: int = 0
    """the weight version that generated the batch: the number of learner updates the engine's
    weights had had (0 = the initial model); a step's staleness is step - policy_version"""
    gate: Optional[Tensor] = None
    """(B, T) float32 IntroLLM gate c_t (1 = new temperature drawn)"""
    z: Optional[Tensor] = None
    """(B, T) float32 IntroLLM Beta draw (0 where gate = 0)"""
    logp_phi: Optional[Tensor] = None
    """(B, T) float32 IntroLLM behaviour log pi_phi(a_t)"""
    rewards: Optional[Tensor] = None
    """(B,) float32 in [0, 1], filled by the reward stage"""
    advantages: Optional[Tensor] = None
    """(B,) float32, filled from the rewards (GRPO group normalisation)"""
    stats: dict = field(default_factory=dict)
    """engine-side counters and timings (floats), for metrics"""

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def response_lengths(self) -> Tensor:
        return self.response_mask.sum(-1)

    def sequences(self) -> tuple[Tensor, Tensor]:
        """(input_ids (B, Lp+T), attention_mask (B, Lp+T)) of prompt + response."""
        ids = torch.cat([self.prompt_ids, self.response_ids], 1)
        return ids, torch.cat([self.prompt_mask, self.response_mask], 1)

    def validate(self) -> "TrajectoryBatch":
        """Check the schema; returns self so stages can write ``batch.validate()`` inline."""
        b, lp = self.prompt_ids.shape
        t = self.response_ids.shape[1]
        _check(self.prompt_mask.shape == (b, lp), "prompt_mask", self.prompt_mask.shape, (b, lp))
        for name in ("response_mask", *_PER_TOKEN):
            value = getattr(self, name)
            if value is not None:
                _check(tuple(value.shape) == (b, t), name, tuple(value.shape), (b, t))
        for name in _PER_RESPONSE:
            value = getattr(self, name)
            if value is not None:
                _check(tuple(value.shape) == (b,), name, tuple(value.shape), (b,))
        for name in _LISTS:
            _check(len(getattr(self, name)) == b, name, len(getattr(self, name)), b)
        if self.prompt_mask.dtype != torch.bool or self.response_mask.dtype != torch.bool:
            raise SchemaError("prompt_mask and response_mask must be bool tensors")
        # responses are right-padded: a mask row is ones then zeros
        if t > 1 and (self.response_mask[:, 1:] & ~self.response_mask[:, :-1]).any():
            raise SchemaError("response_mask must be contiguous from position 0 (right padding)")
        if lp > 1 and (self.prompt_mask[:, :-1] & ~self.prompt_mask[:, 1:]).any():
            raise SchemaError("prompt_mask must be contiguous up to the last column (left padding)")
        tau = self.tau[self.response_mask]
        if not torch.isfinite(tau).all() or (tau <= 0).any():
            raise SchemaError("tau must be finite and > 0 on every generated token")
        if self.gate is not None:
            g = self.gate[self.response_mask]
            if not ((g == 0) | (g == 1)).all():
                raise SchemaError("gate must be 0 or 1 on every generated token")
        return self

    def to_state(self) -> dict:
        """Plain tensors, strings, numbers and dicts (``torch.load(weights_only=True)`` reads
        them back): a checkpoint keeps the batch that was in flight (``launch.trainer``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @staticmethod
    def from_state(state: dict) -> "TrajectoryBatch":
        return TrajectoryBatch(**state).validate()

    # ------------------------------------------------------------------ reshaping

    def select(self, index: Tensor | list[int]) -> "TrajectoryBatch":
        """The rows ``index`` (a list or long tensor), as a new batch."""
        idx = torch.as_tensor(index, dtype=torch.long)
        rows = idx.tolist()
        kw = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                kw[f.name] = value[idx]
            elif f.name in _LISTS:
                kw[f.name] = [value[i] for i in rows]
            else:
                kw[f.name] = value
        return TrajectoryBatch(**kw)

    def split(self, parts: int) -> list["TrajectoryBatch"]:
        """``parts`` contiguous, equal slices (B must be divisible), e.g. one per learner rank."""
        b = len(self)
        if b % parts:
            raise SchemaError(f"batch of {b} responses cannot be split into {parts} equal parts")
        n = b // parts
        return [self.select(list(range(i * n, (i + 1) * n))) for i in range(parts)]

    @staticmethod
    def concat(batches: list["TrajectoryBatch"], pad_id: int = 0) -> "TrajectoryBatch":
        """Rows of several batches (prompt/response widths are re-padded to the widest)."""
        if not batches:
            raise SchemaError("concat needs at least one batch")
        lp = max(x.prompt_ids.shape[1] for x in batches)
        t = max(x.response_ids.shape[1] for x in batches)
        kw = {}
        for f in dataclasses.fields(TrajectoryBatch):
            values = [getattr(x, f.name) for x in batches]
            if f.name in _LISTS:
                kw[f.name] = [v for vs in values for v in vs]
            elif all(isinstance(v, Tensor) for v in values):
                if f.name in ("prompt_ids", "prompt_mask"):
                    fill = pad_id if f.name == "prompt_ids" else False
                    kw[f.name] = torch.cat([_pad_left(v, lp, fill) for v in values])
                elif values[0].dim() == 2:
                    fill = pad_id if f.name == "response_ids" else 0
                    kw[f.name] = torch.cat([_pad_right(v, t, fill) for v in values])
                else:
                    kw[f.name] = torch.cat(values)
            elif f.name == "stats":
                kw[f.name] = {k: v for x in batches for k, v in x.stats.items()}
            elif f.name == "step":
                kw[f.name] = values[0]
            elif f.name == "policy_version":  # the oldest: staleness is never understated
                kw[f.name] = min(values)
            elif any(v is not None for v in values):
                raise SchemaError(f"concat: field {f.name} is set in some batches but not all")
            else:
                kw[f.name] = None
        return TrajectoryBatch(**kw)


def _check(ok: bool, name: str, got, want) -> None:
    if not ok:
        raise SchemaError(f"TrajectoryBatch.{name} has shape/length {got}, expected {want}")


def _pad_left(x: Tensor, width: int, fill) -> Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.full((x.shape[0], width - x.shape[1]), fill, dtype=x.dtype)
    return torch.cat([pad, x], 1)


def _pad_right(x: Tensor, width: int, fill) -> Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.full((x.shape[0], width - x.shape[1]), fill, dtype=x.dtype)
    return torch.cat([x, pad], 1)
