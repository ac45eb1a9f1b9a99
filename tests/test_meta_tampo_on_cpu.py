"""TAMPO meta-policy and sparsemax (docs/algorithms.md §3)."""

import io
import itertools

import pytest
import torch

from meta import TAMPO, sparsemax
from meta.tampo import DEFAULT_CANDIDATES, nucleus_sample


def sparsemax_bisection(x: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """Reference: the simplex projection p = max(x - t, 0) with t solving sum p = 1, by
    bisection."""
    lo, hi = x.max() - 1.0, x.max()  # sum(max(x - lo, 0)) >= 1 >= sum(max(x - hi, 0)) = 0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if (x - mid).clamp_min(0).sum() > 1:
            lo = mid
        else:
            hi = mid
    return (x - (lo + hi) / 2).clamp_min(0)


def sparsemax_brute_force(x: torch.Tensor) -> torch.Tensor:
    """Reference: among all supports S, the one whose threshold gives p > 0 exactly on S."""
    for size in range(1, len(x) + 1):
        for support in itertools.combinations(range(len(x)), size):
            t = (x[list(support)].sum() - 1) / size
            p = (x - t).clamp_min(0)
            if set(torch.nonzero(p > 0).flatten().tolist()) <= set(support) and torch.all(
                    x[list(support)] - t >= 0):
                return p
    raise AssertionError("no support found")


def test_sparsemax_matches_independent_references():
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 5.0):
        x = torch.randn(20, 6, generator=g, dtype=torch.float64) * scale
        p = sparsemax(x, dim=-1)
        for row, prow in zip(x, p):
            torch.testing.assert_close(prow, sparsemax_bisection(row), atol=1e-10, rtol=0)
            torch.testing.assert_close(prow, sparsemax_brute_force(row), atol=1e-12, rtol=0)
        torch.testing.assert_close(p.sum(-1), torch.ones(20, dtype=torch.float64))
        assert torch.all(p >= 0)
        torch.testing.assert_close(sparsemax(x + 3.7, dim=-1), p)  # shift invariance


def test_sparsemax_hand_cases_and_dim():
    # [0.5, 0]: both in support, threshold (0.5 - 1) / 2 = -0.25 -> [0.75, 0.25]
    torch.testing.assert_close(sparsemax(torch.tensor([0.5, 0.0])), torch.tensor([0.75, 0.25]))
    # [2, 0]: 1 + 2 * 0 = 1 > 2 is false -> support {0} -> [1, 0]
    torch.testing.assert_close(sparsemax(torch.tensor([2.0, 0.0])), torch.tensor([1.0, 0.0]))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sparsemax(x, dim=0), sparsemax(x.T, dim=-1).T)


def test_update_moves_pi_toward_temperature_liked_by_positive_trajectories():
    s = TAMPO(candidates=(0.6, 1.0, 1.4), warmup_steps=0)
    # positive trajectories are likeliest under 0.6, negative ones under 1.4
    loglik = torch.tensor([[-1.0, -1.5, -3.0]] * 2 + [[-3.0, -1.5, -1.0]] * 2)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    stats = s.update(loglik, adv)
    # sparsemax([-1, -1.5, -3]): threshold (-2.5 - 1) / 2 = -1.75 -> [0.75, 0.25, 0]
    # batch advantage = mean([.75,.25,0], [.75,.25,0], -[0,.25,.75], -[0,.25,.75])
    #                 = [.375, 0, -.375]
    torch.testing.assert_close(stats["batch_advantage"],
                               torch.tensor([0.375, 0.0, -0.375], dtype=torch.float64))
    # EMA = 0.05 * that = [.01875, 0, -.01875]; min-max -> [1, .5, 0]; / 1.5 -> [2/3, 1/3, 0]
    torch.testing.assert_close(s.ema, torch.tensor([0.01875, 0.0, -0.01875], dtype=torch.float64))
    torch.testing.assert_close(s.pi, torch.tensor([2 / 3, 1 / 3, 0.0], dtype=torch.float64))
    assert stats["pi"].shape == (3,) and s.num_updates == 1


def test_rows_left_out_for_zero_advantage_still_count_in_the_batch_mean():
    """The learner drops zero-advantage rows (learner.skip_zero_adv); passing the step's row count
    gives exactly the update of the full batch."""
    loglik = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    adv = torch.tensor([1.0, -1.0, 0.0, 0.5, 0.0, -0.5])
    full, part = TAMPO(candidates=(0.6, 1.0, 1.4)), TAMPO(candidates=(0.6, 1.0, 1.4))
    expect = full.update(loglik, adv)
    kept = adv != 0
    got = part.update(loglik[kept], adv[kept], num_rows=6)
    torch.testing.assert_close(got["batch_advantage"], expect["batch_advantage"])
    torch.testing.assert_close(part.pi, full.pi)
    with pytest.raises(ValueError, match="num_rows"):
        part.update(loglik, adv, num_rows=2)


def test_pi_uniform_when_all_ema_values_equal():
    s = TAMPO()
    s.update(torch.randn(8, 10), torch.zeros(8))  # zero advantages -> EMA stays 0
    torch.testing.assert_close(s.pi, torch.full((10,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(TAMPO.policy_from_ema(torch.full((4,), 3.0)), torch.full((4,), 0.25))


def test_warmup_draws_uniformly_even_when_pi_is_peaked():
    s = TAMPO(warmup_steps=5, granularity="prompt", top_p=0.0)
    s.pi = torch.tensor([1.0] + [0.0] * 9, dtype=torch.float64)
    temps = s.plan(step=0, num_prompts=20_000, generator=torch.Generator().manual_seed(0))
    counts = torch.stack([(temps == torch.tensor(c, dtype=torch.float32)).sum()
                          for c in DEFAULT_CANDIDATES])
    assert counts.sum() == 20_000
    assert torch.all((counts - 2000).abs() < 200)  # 2000 +- ~4.5 sigma
    s.num_updates = 5  # warm-up over: top_p = 0 -> argmax = 0.6 for every prompt
    assert torch.all(s.plan(step=5, num_prompts=50) == 0.6)


def test_nucleus_sampling():
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    assert torch.all(nucleus_sample(probs, 0.0, 10) == 1)  # argmax
    # top_p 0.7: sorted [.5, .3, .2], mass before [0, .5, .8] -> keep {1, 2} with odds 5:3
    idx = nucleus_sample(probs, 0.7, 8000, torch.Generator().manual_seed(0))
    assert set(idx.tolist()) == {1, 2}
    assert abs((idx == 1).float().mean().item() - 0.625) < 0.03
    # ties at the top: argmax keeps the lowest index
    assert nucleus_sample(torch.tensor([0.4, 0.4, 0.2]), 0.0, 1).item() == 0


def test_step_granularity_gives_one_temperature_per_step():
    s = TAMPO(warmup_steps=0)
    temps = s.plan(step=3, num_prompts=16, generator=torch.Generator().manual_seed(2))
    assert temps.shape == (16,) and temps.dtype == torch.float32 and torch.all(temps == temps[0])
    assert any(abs(temps[0].item() - c) < 1e-6 for c in DEFAULT_CANDIDATES)


def test_state_dict_round_trip_reproduces_plan():
    g = torch.Generator().manual_seed(0)
    a = TAMPO(granularity="prompt", warmup_steps=2)
    for _ in range(4):
        a.update(torch.randn(16, 10, generator=g) - 2, torch.randn(16, generator=g))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = TAMPO(granularity="prompt", warmup_steps=2)
    b.load_state_dict(torch.load(buf))
    assert torch.equal(a.ema, b.ema) and torch.equal(a.pi, b.pi) and b.num_updates == 4
    pa = a.plan(4, 32, torch.Generator().manual_seed(7))
    pb = b.plan(4, 32, torch.Generator().manual_seed(7))
    assert torch.equal(pa, pb)
    with pytest.raises(ValueError, match="candidates"):
        TAMPO(candidates=(0.5, 1.0)).load_state_dict(a.state_dict())


@pytest.mark.parametrize("kwargs,message", [
    (dict(top_p=1.5), r"top_p \(1.5\) must be in \[0, 1\]"),
    (dict(ema_alpha=0.0), r"ema_alpha \(0.0\) must be in \(0, 1\]"),
    (dict(granularity="token"), r"granularity \('token'\) must be 'step' or 'prompt'"),
    (dict(candidates=(1.0, 1.0)), r"distinct"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TAMPO(**kwargs)


def test_update_checks_shapes():
    with pytest.raises(ValueError, match=r"must be \(B, K\) with K = 10"):
        TAMPO().update(torch.zeros(4, 3), torch.zeros(4))
