"""The plain objects behind the reward and meta actors (no Ray needed)."""

from __future__ import annotations

import json

import pytest
import torch

from meta import build_strategy
from meta.worker import MetaWorker
from reward.worker import RewardWorker
from rollout.base import ResponseRecord, RolloutRequest, assemble_batch


def batch_with(texts, groups, answers, levels):
    reqs = [RolloutRequest([1, 2], g, 1.0, f"p{g}", "arith", a, lvl)
            for g, a, lvl in zip(groups, answers, levels)]
    recs = [ResponseRecord([5] * 3, [0.9, 1.1, 1.2], [-0.5] * 3, "stop", t) for t in texts]
    return assemble_batch(reqs, recs, pad_id=0, step=3)


@pytest.fixture(scope="module")
def reward_worker():
    w = RewardWorker(num_workers=0)
    yield w
    w.close()


def test_reward_worker_scores_and_normalises_per_group(reward_worker, tmp_path):
    texts = ["\\boxed{4}", "\\boxed{5}", "\\boxed{4}", "\\boxed{7}", "\\boxed{7}"]
    b1 = batch_with(texts[:3], [0, 0, 0], ["4"] * 3, [1, 1, 1])
    b2 = batch_with(texts[3:], [1, 1], ["7", "7"], [2, 2])
    scored, metrics = reward_worker.score(b1, b2)
    assert scored.rewards.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert abs(scored.advantages[:3].sum().item()) < 1e-5 and scored.advantages[1] < 0
    assert scored.advantages[3:].abs().max() < 1e-5  # no signal in an all-correct group
    assert metrics["frac_reward_zero_std"] == 0.5
    assert metrics["critic/score/mean"] == pytest.approx(0.8)
    assert metrics["tau/mean"] == pytest.approx((0.9 + 1.1 + 1.2) / 3)
    assert metrics["critic/score/mean_L2"] == 1.0
    path = reward_worker.dump(scored, str(tmp_path / "d" / "step.jsonl"))
    rows = [json.loads(line) for line in open(path)]
    assert len(rows) == 5 and rows[1]["reward"] == 0.0 and len(rows[0]["tau"]) == 3


def test_the_random_reward_control_learns_from_seeded_coin_flips_of_the_verifier_mean():
    """reward.random_control: the learner's rewards are Bernoulli(p) with p = the verifier's batch
    mean, the same for the same (seed, step); the logged score stays the verifier's."""
    texts = ["\\boxed{4}"] * 30 + ["\\boxed{5}"] * 10  # verifier: 30 of 40 correct
    w = RewardWorker(num_workers=0, random_control=True, seed=1)
    try:
        runs = [w.score(batch_with(texts, [i // 4 for i in range(40)], ["4"] * 40, [1] * 40))
                for _ in range(2)]
        other_step = batch_with(texts, [i // 4 for i in range(40)], ["4"] * 40, [1] * 40)
        other_step.step = 4
        other, _ = w.score(other_step)
    finally:
        w.close()
    (scored, metrics), (again, _) = runs
    assert metrics["critic/score/mean"] == pytest.approx(0.75)  # the verifier's
    flips = scored.rewards
    assert set(flips.tolist()) <= {0.0, 1.0} and torch.equal(flips, again.rewards)
    assert metrics["reward/random_control_mean"] == pytest.approx(flips.mean().item())
    assert not torch.equal(flips, other.rewards)  # another step, other flips
    correct = torch.tensor([1.0] * 30 + [0.0] * 10)
    assert not torch.equal(flips, correct)  # not the verifier's rewards
    assert 0.45 <= flips.mean().item() <= 0.95  # Bernoulli(0.75) over 40 draws
    assert not torch.equal(scored.advantages, torch.zeros(40))  # advantages from the flips


def test_meta_worker_plans_and_learns_tampo():
    w = MetaWorker(build_strategy("tampo", warmup_steps=0, top_p=0.0), seed=0)
    assert w.candidates[0] == pytest.approx(0.6) and len(w.candidates) == 10
    first = w.plan(0, 4)
    assert len(first) == 4 and len(set(first)) == 1  # step granularity: one T for the step
    loglik = torch.full((4, 10), -2.0)
    loglik[:2, 9] = -0.5  # positive-advantage trajectories are likelier at T = 1.5
    out = w.update({"loglik": loglik[:2], "advantages": torch.tensor([1.0, 1.0])},
                   {"loglik": loglik[2:], "advantages": torch.tensor([-1.0, -1.0])})
    assert out["tampo/pi_T1.50"] == max(v for k, v in out.items() if k.startswith("tampo/pi_T"))
    assert w.plan(1, 2) == [pytest.approx(1.5)] * 2  # top_p = 0: argmax
    state = w.state_dict()
    again = MetaWorker(build_strategy("tampo", warmup_steps=0, top_p=0.0), seed=5)
    again.load_state_dict(state)
    assert again.plan(2, 3) == w.plan(2, 3)


def test_meta_worker_is_a_no_op_for_scalar_strategies():
    w = MetaWorker(build_strategy("linear", total_steps=3), seed=0)
    assert w.candidates is None and w.update(None) == {}
    assert w.plan(2, 2) == [pytest.approx(1.5)] * 2


def test_prompt_sampler_crosses_epochs_and_resumes_exactly():
    from launch.sampling import PromptSampler

    s = PromptSampler(5, seed=1)
    first = s.next(3) + s.next(3)  # crosses into epoch 1
    assert sorted(first[:5]) == [0, 1, 2, 3, 4] and s.epoch == 1 and s.pos == 1
    state = s.state_dict()
    tail = s.next(7)
    r = PromptSampler(5, seed=1)
    r.load_state_dict(state)
    assert r.next(7) == tail


def test_evaluation_plans_do_not_shift_the_training_plans():
    """Otherwise changing eval.every would change which temperatures training samples."""
    a = MetaWorker(build_strategy("tampo", granularity="prompt"), seed=3)
    b = MetaWorker(build_strategy("tampo", granularity="prompt"), seed=3)
    first = a.plan(0, 8)
    assert b.plan(0, 8) == first
    b.plan(1, 50, for_eval=True)  # an evaluation between two training steps
    assert a.plan(1, 8) == b.plan(1, 8)


def test_equal_format_rewards_give_zero_advantage_and_count_as_zero_std():
    """reward.format_weight = 0.1: eight boxed wrong answers all score 0.1 (not exactly
    representable), so the group has no signal: advantage exactly 0, counted by
    frac_reward_zero_std."""
    w = RewardWorker(num_workers=0, format_weight=0.1)
    try:
        texts = ["\\boxed{5}"] * 8 + ["\\boxed{4}", "\\boxed{5}"]
        scored, metrics = w.score(batch_with(texts, [0] * 8 + [1, 1], ["4"] * 10, [1] * 10))
    finally:
        w.close()
    assert torch.equal(scored.rewards[:8], torch.full((8,), 0.1))
    assert torch.equal(scored.advantages[:8], torch.zeros(8))
    assert scored.advantages[8] > 0 > scored.advantages[9]
    assert metrics["frac_reward_zero_std"] == 0.5
