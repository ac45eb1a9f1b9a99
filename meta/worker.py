"""``MetaWorker``: what the meta actor runs: the authoritative copy of the strategy's step-level
state: each step's per-prompt temperatures (``plan``) and TAMPO's update from the learners'
(ℓ_k, advantage) pairs. Per-token decisions happen in the rollout engines, never here.
"""

from __future__ import annotations

import torch

from meta.base import TemperatureStrategy


class MetaWorker:
    def __init__(self, strategy: TemperatureStrategy, seed: int = 0):
        self.strategy = strategy
        self.generator = torch.Generator().manual_seed(seed)
        self.eval_generator = torch.Generator().manual_seed(seed + 1)  # eval never shifts training

    @property
    def candidates(self) -> list[float] | None:
        """TAMPO's candidate temperatures (the learners compute ℓ_k for them), else None."""
        c = self.strategy.candidates
        return None if c is None else [float(t) for t in c]

    def get_candidates(self) -> list[float] | None:
        return self.candidates

    def plan(self, step: int, num_prompts: int, for_eval: bool = False,
             seed: int | None = None) -> list[float]:
        """(P,) temperatures for this step's prompts (evaluation draws from its own RNG;
        ``seed``: from a generator seeded with it, which leaves both RNGs as they are, so the
        draws do not depend on what was drawn before)."""
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        else:
            gen = self.eval_generator if for_eval else self.generator
        return self.strategy.plan(step, num_prompts, gen).tolist()

    def update(self, *rank_inputs: dict | None) -> dict[str, float]:
        """Learn from one step: each learner rank's {'loglik': (b, K), 'advantages': (b,)}."""
        inputs = [x for x in rank_inputs if x]
        if not inputs or self.strategy.candidates is None:
            return {}
        loglik = torch.cat([x["loglik"] for x in inputs])  # (B, K)
        adv = torch.cat([x["advantages"] for x in inputs])  # (B,)
        # the step's trajectory count: rows the learners skipped (advantage 0) add nothing to
        # the sum but count in TAMPO's batch mean
        rows = sum(x.get("rows", 0) for x in inputs) or len(adv)
        stats = self.strategy.update(loglik=loglik, advantages=adv, num_rows=rows)
        out = {"tampo/expected_temperature": float(stats["expected_temperature"]),
               "tampo/pi_entropy": float(stats["pi_entropy"])}
        for t, p in zip(self.candidates, stats["pi"].tolist()):
            out[f"tampo/pi_T{t:.2f}"] = p
        return out

    def state_dict(self) -> dict:
        return {"strategy": self.strategy.state_dict(), "generator": self.generator.get_state(),
                "eval_generator": self.eval_generator.get_state()}

    def load_state_dict(self, sd: dict) -> None:
        self.strategy.load_state_dict(sd["strategy"])
        self.generator.set_state(sd["generator"])
        self.eval_generator.set_state(sd["eval_generator"])
