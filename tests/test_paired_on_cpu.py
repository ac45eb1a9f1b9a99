"""The paired bootstrap of launch.compare, against cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from launch.paired import Z_DETECT, paired_bootstrap, paired_differences


def test_one_seed_two_problems_matches_the_hand_computed_bootstrap():
    """d = [1, 0]: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the 95 %
    interval is [0, 1] and the standard error sqrt(0.25 / 2)."""
    arm = {0: {"a": [1.0, 1.0], "b": [0.0, 0.0]}}
    base = {0: {"a": [0.0, 0.0], "b": [0.0, 0.0]}}
    out = paired_bootstrap(paired_differences(arm, base), reps=20_000)
    assert out["diff"] == 0.5 and (out["lo"], out["hi"]) == (0.0, 1.0)
    assert out["se"] == pytest.approx(np.sqrt(0.25 / 2), abs=0.01)
    assert out["mde"] == pytest.approx(Z_DETECT * out["se"])
    assert out["covers_zero"] and out["seeds"] == 1 and out["problems"] == 2


def test_seeds_are_resampled_too():
    """Within each seed every problem has the same d (no problem-level noise), seed 0: +1, seed
    1: 0: only the seed resampling varies, over {1, 0.5, 0} with 1/4, 1/2, 1/4."""
    arm = {0: {p: [1.0] for p in "abc"}, 1: {p: [0.0] for p in "abc"}}
    base = {0: {p: [0.0] for p in "abc"}, 1: {p: [0.0] for p in "abc"}}
    out = paired_bootstrap(paired_differences(arm, base), reps=20_000)
    assert out["diff"] == 0.5 and (out["lo"], out["hi"]) == (0.0, 1.0)
    assert out["se"] == pytest.approx(np.sqrt(0.125), abs=0.01)


def test_identical_arms_give_zero_and_equal_means_give_an_interval_around_zero():
    rng = np.random.default_rng(3)
    runs = {s: {f"p{i}": rng.integers(0, 2, 8).astype(float).tolist() for i in range(200)}
            for s in range(3)}
    same = paired_bootstrap(paired_differences(runs, runs))
    assert same["diff"] == same["lo"] == same["hi"] == same["se"] == 0.0 and same["covers_zero"]
    # the same results assigned to other problems: equal means, per-problem differences
    shifted = {s: dict(zip(sorted(r), [r[k] for k in sorted(r)][1:] + [r[sorted(r)[0]]]))
               for s, r in runs.items()}
    out = paired_bootstrap(paired_differences(shifted, runs))
    assert out["diff"] == pytest.approx(0.0, abs=1e-12) and out["covers_zero"]
    assert out["hi"] - out["lo"] > 0.01  # width from resampling alone


def test_a_real_difference_is_found_and_pass_differs_from_avg():
    rng = np.random.default_rng(0)
    base = {0: {f"p{i}": [0.0, 0.0] for i in range(500)}}
    arm = {0: {f"p{i}": [float(rng.random() < 0.4), 0.0] for i in range(500)}}
    avg = paired_bootstrap(paired_differences(arm, base, "avg"))
    pas = paired_bootstrap(paired_differences(arm, base, "pass"))
    assert not avg["covers_zero"] and avg["lo"] > 0
    assert pas["diff"] == pytest.approx(2 * avg["diff"])  # pass: any of the 2 correct
    assert pas["se"] == pytest.approx(np.sqrt(0.24 / 500), rel=0.15)


def test_mismatched_runs_are_refused_by_name():
    a = {0: {"p1": [1.0]}, 1: {"p1": [1.0]}}
    with pytest.raises(ValueError, match="different seeds"):
        paired_differences(a, {0: {"p1": [1.0]}})
    with pytest.raises(ValueError, match="seed 0: .*different held-out problems.*p2"):
        paired_differences({0: {"p1": [1.0]}}, {0: {"p2": [1.0]}})
    with pytest.raises(ValueError, match="'p1' has 2 responses in one arm and 1 .*eval.samples"):
        paired_differences({0: {"p1": [1.0, 0.0]}}, {0: {"p1": [1.0]}})
