"""Trainer.evaluate's sampling seed, with stand-in actors (no Ray cluster, no model)."""

from __future__ import annotations

import pytest

from data.synthetic import generate
from launch.sampling import eval_seed, rollout_seed
from launch.trainer import Trainer
from tests.test_config_on_cpu import compose_run


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class FakeActor:
    """A rollout, reward and meta actor at once: `.remote` calls return their values directly."""

    def __init__(self, calls: list):
        def generate_texts(reqs, step, seed, greedy):
            calls.append((seed, [r.problem_id for r in reqs]))
            return [r"\boxed{1}"] * len(reqs)

        self.generate_texts = _Remote(generate_texts)
        self.set_decoding = _Remote(lambda mode=None, temperature=None: None)
        self.score_texts = _Remote(lambda items: [0.0] * len(items))
        self.plan = _Remote(lambda step, n, for_eval=False, seed=None: [1.0] * n)


def eval_calls(monkeypatch, tmp_path, seed: int, step: int = 40) -> list:
    import ray

    monkeypatch.setattr(ray, "get", lambda refs: refs)
    run = compose_run(f"seed={seed}", "eval.samples=2")
    heldout = generate(6, "eval", seed=0)  # one held-out set for every run seed here
    trainer = Trainer(run, str(tmp_path), "unused", [], heldout)
    calls: list = []
    trainer.heldout_ids = [[1, 2]] * len(heldout)
    trainer.rollout = [FakeActor(calls), FakeActor(calls)]
    trainer.reward = trainer.meta = FakeActor(calls)
    assert "eval/all/avg@2" in trainer.evaluate(step)
    return calls


def test_the_eval_sampling_seed_follows_the_run_seed(monkeypatch, tmp_path):
    runs = {s: eval_calls(monkeypatch, tmp_path, s) for s in (0, 1, 2)}
    seeds = {s: {seed for seed, _ in calls} for s, calls in runs.items()}
    assert all(len(v) == 1 for v in seeds.values())  # one seed per evaluation, for every actor
    assert len({v.pop() for v in seeds.values()}) == 3  # other run seeds: other sampling seeds
    again = eval_calls(monkeypatch, tmp_path, 1)
    assert again == runs[1]  # the same seed: the same sampling seed and the same requests
    assert [ids for _, ids in runs[0]] == [ids for _, ids in runs[2]]  # the same problems
    assert runs[0][0][0] == 7_919 + 40  # seed 0 keeps the seed it always had
    assert eval_calls(monkeypatch, tmp_path, 1, step=41)[0][0] != runs[1][0][0]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_eval_seeds_are_not_a_training_steps_in_a_run_of_under_7919_steps(seed):
    train = {rollout_seed(seed, t) for t in range(7_919)}
    assert not train & {eval_seed(seed, t) for t in range(7_919)}
    assert eval_seed(seed, 3) == eval_seed(seed, 3) != eval_seed(seed + 1, 3)
