"""Matched and tuned decoding, and budgets: the fair half of ``launch.compare``.

Every arm's final model is decoded, on the held-out test problems and on validation problems
(a split disjoint from test and train), at each shared temperature (every token at it, whatever
the strategy) and under the arm's own policy ('own': its plan and per-token rule): what
``Trainer.sweep`` writes as ``evals/step_NNNNNN_<split>_<decoding>.jsonl`` (or ``launch.compare``
adds later into ``<run>/sweep/``). From those records:

- **matched**: each arm minus the baseline at the same decoding temperature, problem by problem
  (the same problems, the same temperature, the same sampling seed);
- **tuned**: each arm at its best decoding (a shared temperature or 'own'), chosen per metric
  by its validation score pooled over seeds, which never reads a test record; then the test
  difference to the baseline at the baseline's own tuned decoding;
- **budgets**: what each arm was given: θ and φ optimizer updates, responses, tokens, the
  steps' seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from launch.analyze import markdown_table
from launch.metrics import problem_records
from launch.paired import interval_cell

SPLITS = ("test", "val")
TUNED_METRICS = ("avg", "pass")
"""the metrics a decoding is tuned for (greedy accuracy has no temperature)"""


def sweep_records(run_dir: Path, split: str, decoding: str) -> dict[str, list[float]] | None:
    """{problem_id: rewards} of a run's last `split` ('test' | 'val') evaluation at `decoding`
    ('t0.6', 'own'): the run's own final sweep, else the one added to ``<run>/sweep/``."""
    if split not in SPLITS:
        raise ValueError(f"split ({split!r}) must be one of {SPLITS}")
    for folder in (Path(run_dir), Path(run_dir) / "sweep"):
        got = problem_records(folder, tag=f"{split}_{decoding}")
        if got is not None:
            return got
    return None


def records(run_dir: Path, split: str, decoding: str) -> dict[str, list[float]]:
    """``sweep_records``, or a ValueError that names the run, the records and the fix."""
    got = sweep_records(run_dir, split, decoding)
    if got is None:
        raise ValueError(f"{run_dir} has no {split} records at {decoding} "
                         f"(evals/step_*_{split}_{decoding}.jsonl); rerun launch.compare with "
                         "this --eval-temperatures, which adds them from the run's checkpoint"
                         + (", and --val-size > 0 (synthetic data) or data.val_path (local "
                            "files)" if split == "val" else ""))
    return got


def has_sweep(run_dir: Path, decodings: Iterable[str]) -> bool:
    """Whether the run has test and validation records at every one of `decodings`."""
    return all(sweep_records(run_dir, s, d) is not None for s in SPLITS for d in decodings)


def mean_score(records: dict[str, list[float]], metric: str) -> float:
    """Avg@k ('avg') or Pass@k with n = k ('pass') over the problems of `records`."""
    from launch.paired import SCORES

    return float(np.mean([SCORES[metric](r) for r in records.values()]))


def validation_scores(run_dirs: list[Path], decodings: list[str], metric: str
                      ) -> dict[str, float]:
    """{decoding: its validation `metric`, mean over the arm's seeds}: validation records only."""
    out = {}
    for d in decodings:
        got = [records(r, "val", d) for r in run_dirs]
        if any(not g for g in got):
            raise ValueError("the validation split is empty; set --val-size > 0 (synthetic "
                             "data) or data.val_path (local files)")
        out[d] = float(np.mean([mean_score(g, metric) for g in got]))
    return out


def tune(scores: dict[str, float]) -> str:
    """The decoding with the best validation score (on a tie: the first in `scores`' order)."""
    return max(scores, key=lambda d: (scores[d], -list(scores).index(d)))


def _pair(arm: list[Path], base: list[Path], seeds: list[int], decoding: str,
          base_decoding: str, metric: str, reps: int) -> dict:
    from launch.paired import paired_bootstrap, paired_differences

    a = {s: records(r, "test", decoding) for s, r in zip(seeds, arm)}
    b = {s: records(r, "test", base_decoding) for s, r in zip(seeds, base)}
    return paired_bootstrap(paired_differences(a, b, metric), reps)


def matched(runs: dict[str, list[Path]], seeds: list[int], baseline: str,
            temperatures: list[str], reps: int = 10_000) -> dict[str, dict[str, dict]]:
    """{arm: {decoding: {metric: paired bootstrap of arm - baseline}}}: both decoded at the same
    temperature, on the same test problems, with the same sampling seed."""
    return {name: {t: {m: _pair(dirs, runs[baseline], seeds, t, t, m, reps)
                       for m in TUNED_METRICS} for t in temperatures}
            for name, dirs in runs.items() if name != baseline}


def tuned(runs: dict[str, list[Path]], seeds: list[int], baseline: str | None,
          decodings: list[str], reps: int = 10_000) -> dict:
    """Each arm at its best decoding per metric, chosen on validation (``tune``), and on test:
    {"choice": {arm: {metric: decoding}}, "val": {arm: {metric: {decoding: score}}},
    "test": {arm: {metric: test score at the choice}}, "paired": {arm: {metric: bootstrap of
    arm - baseline}}} (no "paired" without a baseline). The choice is made before any test record
    is opened."""
    val = {name: {m: validation_scores(dirs, decodings, m) for m in TUNED_METRICS}
           for name, dirs in runs.items()}
    choice = {name: {m: tune(val[name][m]) for m in TUNED_METRICS} for name in runs}
    test = {name: {m: float(np.mean([mean_score(records(r, "test", choice[name][m]), m)
                                     for r in dirs])) for m in TUNED_METRICS}
            for name, dirs in runs.items()}
    out = {"choice": choice, "val": val, "test": test}
    if baseline is not None:
        out["paired"] = {name: {m: _pair(dirs, runs[baseline], seeds, choice[name][m],
                                         choice[baseline][m], m, reps) for m in TUNED_METRICS}
                         for name, dirs in runs.items() if name != baseline}
    return out


def tuned_baseline(runs: dict[str, list[Path]], decodings: list[str]) -> str:
    """The fixed-temperature arm with the best validation Avg@k at its own tuned decoding (the
    first arm when none is fixed): chosen without a test record."""
    fixed = [n for n in runs if n.startswith("fixed")] or list(runs)[:1]
    return tune({n: max(validation_scores(runs[n], decodings, "avg").values()) for n in fixed})


def budget(run_dir: Path) -> dict[str, float]:
    """What the run was given, from its logged steps: θ and φ optimizer updates, responses
    generated, tokens generated, tokens in θ updates, and the steps' wall-clock seconds
    (evaluations, start-up and the final sweep left out: they differ between runs for reasons
    other than training)."""
    from launch.analyze import load_metrics

    rows = [r for r in load_metrics(run_dir) if r.get("step", 0) >= 1
            and "reward/num_items" in r]  # a training step's row (step 0: the base evaluation)
    theta = [r for r in rows if r.get("actor/optimizer_steps", 0) > 0]
    return {"steps": float(len(rows)),
            "theta_updates": sum(r.get("actor/optimizer_steps", 0.0) for r in rows),
            "phi_updates": sum(r.get("phi/optimizer_steps", 0.0) for r in rows),
            "responses": sum(r.get("reward/num_items", 0.0) for r in rows),
            "tokens": sum(r.get("rollout/gen_tokens", 0.0) for r in rows),
            "theta_tokens": sum(r.get("rollout/gen_tokens", 0.0) for r in theta),
            "seconds": sum(r.get("timing_s/step", 0.0) for r in rows)}


def steps_for_theta_updates(run, updates: int) -> int:
    """The fewest training steps of `run` (a RunConfig) in which θ is updated `updates` times
    (IntroLLM's alternating schedule updates θ in half its steps, joint in every one)."""
    from meta.phases import phase_for_step

    phi = run.meta.phi
    if phi is None:
        return updates
    steps = done = 0
    while done < updates:
        done += phase_for_step(steps, phi.schedule, phi.phase_len, phi.phi_first) != "phi"
        steps += 1
    return steps


# ------------------------------------------------------------------------------ report


def matched_table(diffs: dict[str, dict[str, dict]], baseline: str, k: str) -> str:
    temps = sorted({t for d in diffs.values() for t in d}, key=lambda t: float(t[1:]))
    head = ["strategy"] + [f"{name}@{k} at τ = {t[1:]}" for t in temps
                           for name in ("Avg", "Pass")]
    return markdown_table(head, [[name] + [interval_cell(by_t[t][m]) for t in temps
                                           for m in TUNED_METRICS]
                                 for name, by_t in diffs.items()])


def tuned_table(result: dict, baseline: str | None, k: str) -> str:
    label = {"avg": f"Avg@{k}", "pass": f"Pass@{k}"}
    head = ["strategy"]
    for m in TUNED_METRICS:
        head += [f"decoding for {label[m]} (validation)", f"test {label[m]}"]
        if baseline is not None:
            head.append(f"test {label[m]} − {baseline}")
    rows = []
    for name in result["choice"]:
        cells = [name]
        for m in TUNED_METRICS:
            d = result["choice"][name][m]
            cells += [f"{d} ({result['val'][name][m][d]:.3f})", f"{result['test'][name][m]:.3f}"]
            if baseline is not None:
                cells.append("(baseline)" if name == baseline
                             else interval_cell(result["paired"][name][m]))
        rows.append(cells)
    return markdown_table(head, rows)


def scores_table(runs: dict[str, list[Path]], decodings: list[str], k: str) -> str:
    """Markdown: per arm, test Avg@k / Pass@k at every decoding, mean over seeds (± the
    standard deviation over seeds where there are several)."""
    from launch.analyze import mean_std

    head = ["strategy"] + [f"{d} Avg@{k} / Pass@{k}" for d in decodings]
    rows = []
    for name, dirs in runs.items():
        cells = [name]
        for d in decodings:
            parts = []
            for m in TUNED_METRICS:
                mu, sd = mean_std([mean_score(records(r, "test", d), m) for r in dirs])
                parts.append(f"{mu:.3f}" + (f" ± {sd:.3f}" if len(dirs) > 1 else ""))
            cells.append(" / ".join(parts))
        rows.append(cells)
    return markdown_table(head, rows)


def budget_table(budgets: dict[str, list[dict[str, float]]]) -> str:
    cols = [("steps", "steps", "{:.0f}"), ("theta_updates", "θ updates", "{:.0f}"),
            ("phi_updates", "φ updates", "{:.0f}"), ("responses", "responses", "{:.0f}"),
            ("tokens", "tokens generated", "{:.0f}"), ("theta_tokens", "tokens in θ updates",
                                                        "{:.0f}"),
            ("seconds", "training seconds", "{:.0f}")]
    rows = [[name] + [fmt.format(float(np.mean([b[key] for b in bs]))) for key, _, fmt in cols]
            for name, bs in budgets.items()]
    return (markdown_table(["strategy"] + [c[1] for c in cols], rows)
            + "\n\n(mean per run over the seeds)")


def plot_curves(out: Path, runs: dict[str, list[Path]], temperatures: list[str]) -> Path:
    """Test Avg@k and Pass@k against decoding τ, one line per arm (mean over seeds); the arm's
    own policy as a dashed level line."""
    from launch.analyze import _plt, save_figure

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    xs = [float(t[1:]) for t in temperatures]
    for i, (name, dirs) in enumerate(runs.items()):
        color = f"C{i % 10}"
        for ax, m in zip(axes, TUNED_METRICS):
            ys = [np.mean([mean_score(records(r, "test", t), m) for r in dirs])
                  for t in temperatures]
            ax.plot(xs, ys, "o-", color=color, label=name, markersize=3)
            own = np.mean([mean_score(records(r, "test", "own"), m) for r in dirs])
            ax.axhline(own, color=color, linestyle="--", linewidth=0.8)
    for ax, title in zip(axes, ("Avg@k", "Pass@k")):
        ax.set(xlabel="decoding temperature (every token)", ylabel=f"held-out {title}",
               title=f"{title} against decoding τ (dashed: own policy)")
    axes[0].legend(fontsize=7)
    return save_figure(fig, out / "decoding.png")
