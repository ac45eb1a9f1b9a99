"""What each step draws: the prompt order (``PromptSampler``, an epoch-wise shuffle that a
checkpoint resumes exactly) and the sampling seeds of a step's rollout and held-out evaluation."""

from __future__ import annotations

import random


def rollout_seed(seed: int, step: int) -> int:
    """The training rollout's sampling seed at `step` of a run with `seed` (a retried step
    repeats)."""
    return seed * 100_003 + step


def eval_seed(seed: int, step: int) -> int:
    """The held-out evaluation's sampling seed at `step`: from the run's `seed`, so runs with
    other seeds sample other held-out responses (and the same seed the same ones; `launch.evaluate`
    repeats a run's evaluation). 7,919 + step at seed 0, as before; the training rollout's seed of
    step + 7,919, so never a training step's in a run of fewer steps. Only the sampling: the
    held-out problems are `launch.inputs.load_data`'s."""
    return rollout_seed(seed, 7_919 + step)


class PromptSampler:
    """Epoch-shuffled prompt indices; its state (epoch, position) is part of a checkpoint."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch, self.pos = size, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.size:
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            take = min(k - len(out), self.size - self.pos)
            out += self._order[self.pos : self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, sd: dict) -> None:
        self.epoch, self.pos = sd["epoch"], sd["pos"]
        self._order = self._shuffle()
