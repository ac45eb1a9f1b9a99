"""Paired differences between two arms with bootstrap intervals (``launch.compare``).

Runs of one seed share the prompt order and the held-out problems, so two arms (strategies) can
be compared problem by problem: for seed s and problem i, d_si = x_si(arm) - x_si(baseline), where
x is a per-problem score (``SCORES``: the mean of its k rewards for Avg@k, 1 if any is correct for
Pass@k, the greedy response's reward). The difference is the mean over seeds of the mean over
problems of d. Its 95 % interval is a paired bootstrap over both sources of noise: each of
``reps`` resamples draws the seeds with replacement and, for each seed drawn, its problems with
replacement (independently each time it is drawn); the interval is the 2.5 and 97.5
percentiles of the resampled differences.

The smallest detectable difference (``mde``) is (z_0.975 + z_0.8) x the bootstrap standard error
= 2.80 x se: a true difference this large is found (its interval excludes 0) four times in five
with these seeds and problems. More seeds or more problems shrink it as 1 / sqrt(n).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

Z_DETECT = 1.959964 + 0.841621  # two-sided 95 % interval, 80 % power

SCORES: dict[str, Callable[[Sequence[float]], float]] = {
    "avg": lambda rewards: float(np.mean(rewards)),
    "pass": lambda rewards: float(any(r >= 1.0 for r in rewards)),
}
"""per-problem score from its k rewards: avg (-> Avg@k), pass (-> Pass@k with n = k samples)"""


def paired_differences(arm: Mapping[int, Mapping[str, Sequence[float]]],
                       baseline: Mapping[int, Mapping[str, Sequence[float]]],
                       score: str = "avg") -> dict[int, np.ndarray]:
    """{seed: d (N_s,)}, d = score(arm) - score(baseline) per problem, problems matched by id.

    arm, baseline: {seed: {problem_id: its k rewards}}. Every seed and every problem of one must
    be in the other (runs of one seed evaluate the same held-out problems)."""
    if set(arm) != set(baseline):
        raise ValueError(f"the arms were run with different seeds ({sorted(arm)} vs "
                         f"{sorted(baseline)}); pair runs of the same seeds")
    f = SCORES[score]
    out = {}
    for seed in sorted(arm):
        a, b = arm[seed], baseline[seed]
        if set(a) != set(b):
            missing = sorted(set(a) ^ set(b))[:3]
            raise ValueError(f"seed {seed}: the arms evaluated different held-out problems "
                             f"(e.g. {missing}); compare runs with the same data settings")
        ids = sorted(a)
        uneven = [i for i in ids if len(a[i]) != len(b[i])]
        if uneven:
            i = uneven[0]
            raise ValueError(f"seed {seed}: problem {i!r} has {len(a[i])} responses in one arm "
                             f"and {len(b[i])} in the other; compare runs with the same "
                             f"eval.samples")
        out[seed] = np.array([f(a[i]) - f(b[i]) for i in ids], dtype=np.float64)
    return out


def interval_cell(r: dict) -> str:
    """A ``paired_bootstrap`` result as a table cell: the difference, its 95 % interval, and *
    when the interval excludes 0."""
    return "{:+.3f} [{:+.3f}, {:+.3f}]{}".format(r["diff"], r["lo"], r["hi"],
                                                "" if r["covers_zero"] else " *")


def paired_bootstrap(diffs: Mapping[int, np.ndarray], reps: int = 10_000,
                     seed: int = 0) -> dict[str, float]:
    """The mean difference with its paired-bootstrap 95 % interval over seeds and problems.

    Returns diff, lo, hi, se (the bootstrap standard error), mde (2.80 se: the smallest
    difference these sizes detect), covers_zero (lo <= 0 <= hi), seeds, problems (per seed)."""
    if not diffs or any(len(d) == 0 for d in diffs.values()):
        raise ValueError("paired_bootstrap needs at least one seed with at least one problem")
    rng = np.random.default_rng(seed)
    per_seed = [np.asarray(d, dtype=np.float64) for _, d in sorted(diffs.items())]
    n_seeds = len(per_seed)
    # each of the reps x S seed slots draws a seed, then that seed's problems, independently
    pick = rng.integers(0, n_seeds, size=(reps, n_seeds))
    slot_means = np.empty((reps, n_seeds))
    for s, d in enumerate(per_seed):
        rows, cols = np.nonzero(pick == s)
        for lo_ in range(0, len(rows), 2048):  # bounded memory: 2048 x N indices at a time
            part = slice(lo_, lo_ + 2048)
            idx = rng.integers(0, len(d), size=(len(rows[part]), len(d)))
            slot_means[rows[part], cols[part]] = d[idx].mean(1)
    boot = slot_means.mean(1)  # (reps,)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    se = float(boot.std(ddof=1)) if reps > 1 else 0.0
    return {"diff": float(np.mean([d.mean() for d in per_seed])), "lo": float(lo),
            "hi": float(hi), "se": se, "mde": Z_DETECT * se,
            "covers_zero": bool(lo <= 0.0 <= hi), "seeds": len(per_seed),
            "problems": int(np.mean([len(d) for d in per_seed]))}
