"""What every rollout engine shares: the request it is given, the per-response record it
produces, and the one function that turns records into a ``TrajectoryBatch``.

An engine implements ``generate(requests, step, seed) -> TrajectoryBatch`` and
``load_weights(state_dict) -> seconds`` (what the trainer logs as the engine's sync time); both
engines (``hf_engine``, ``vllm_engine``) call the strategy's single per-token path
``strategy.select(RowContext)`` for every sampled row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rollout.trajectory import TrajectoryBatch


@dataclass
class RolloutRequest:
    """One response to generate (a prompt with G responses is G requests sharing group_index)."""

    prompt_ids: list[int]
    group_index: int
    base_tau: float
    """the per-request temperature the strategy planned for this prompt (tau_0 for IntroLLM)"""
    problem_id: str = ""
    task: str = "math"
    answer: str = ""
    level: int = 0
    meta: dict = field(default_factory=dict)


@dataclass
class ResponseRecord:
    """What an engine recorded for one response, one entry per generated token (the per-token
    values as lists or 1-D tensors: the vLLM engine's are views of the records it collected)."""

    token_ids: list[int]
    tau: Sequence[float] | Tensor
    logp: Sequence[float] | Tensor
    """engine's log_softmax(z_t / tau_t)[y_t]"""
    finish_reason: str
    text: str = ""
    gate: Sequence[float] | Tensor | None = None
    z: Sequence[float] | Tensor | None = None
    logp_phi: Sequence[float] | Tensor | None = None

    def check(self) -> None:
        """One tau (and one of each IntroLLM record) per generated token."""
        n = len(self.token_ids)
        for name in ("tau", "logp", "gate", "z", "logp_phi"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"response has {n} tokens but {len(value)} recorded {name} "
                                 "values; the engine lost track of a row")


def assemble_batch(requests: list[RolloutRequest], records: list[ResponseRecord], pad_id: int,
                   step: int = 0, stats: dict | None = None) -> TrajectoryBatch:
    """Pad requests + records into a validated TrajectoryBatch (B = len(requests))."""
    if len(requests) != len(records):
        raise ValueError(f"{len(requests)} requests but {len(records)} responses")
    for r in records:
        r.check()
    b = len(requests)
    lp = max(len(q.prompt_ids) for q in requests)
    t = max(1, max(len(r.token_ids) for r in records))
    prompt_ids = torch.full((b, lp), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, lp), dtype=torch.bool)
    response_ids = torch.full((b, t), pad_id, dtype=torch.long)
    response_mask = torch.zeros((b, t), dtype=torch.bool)
    with_phi = records[0].gate is not None
    per_token = {k: torch.zeros((b, t), dtype=torch.float32)
                 for k in ("tau", "logp", *(("gate", "z", "logp_phi") if with_phi else ()))}
    for i, (q, r) in enumerate(zip(requests, records)):
        n, m = len(q.prompt_ids), len(r.token_ids)
        prompt_ids[i, lp - n:] = torch.tensor(q.prompt_ids, dtype=torch.long)
        prompt_mask[i, lp - n:] = True
        if m:
            response_ids[i, :m] = torch.tensor(r.token_ids, dtype=torch.long)
            response_mask[i, :m] = True
            for k, buf in per_token.items():
                buf[i, :m] = torch.as_tensor(getattr(r, k), dtype=torch.float32)
    batch = TrajectoryBatch(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
        response_mask=response_mask, tau=per_token["tau"], logp_rollout=per_token["logp"],
        group_index=torch.tensor([q.group_index for q in requests], dtype=torch.long),
        level=torch.tensor([q.level for q in requests], dtype=torch.long),
        base_tau=torch.tensor([q.base_tau for q in requests], dtype=torch.float32),
        problem_ids=[q.problem_id for q in requests], tasks=[q.task for q in requests],
        answers=[q.answer for q in requests], metas=[q.meta for q in requests],
        finish_reasons=[r.finish_reason for r in records],
        response_texts=[r.text for r in records], step=step,
        gate=per_token.get("gate"), z=per_token.get("z"), logp_phi=per_token.get("logp_phi"),
        stats=dict(stats or {}),
    )
    return batch.validate()
