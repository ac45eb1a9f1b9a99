"""Held-out evaluation helpers: the groups a problem counts under, and the results table.

The evaluation itself runs on the rollout actors (``launch.trainer.Trainer.evaluate``): k
samples per problem from the run's own strategy, scored by the reward actor, summarised by
``launch.metrics.summarize`` into Avg@k / Pass@k / maj@k overall, per family and per level.
"""

from __future__ import annotations

from data.synthetic import Problem


def groups_of(p: Problem) -> list[str]:
    """The groups a problem's metrics count under: its family, its level, and both."""
    level = f"L{p.level}" if p.level else "L?"
    return [p.task, level, f"{p.task}/{level}"]


def format_table(metrics: dict[str, float], k: int) -> str:
    """A small text table: one row per group with n, Avg@k, Pass@1, Pass@k, maj@k."""
    groups = sorted({key.split("/avg@")[0] for key in metrics if "/avg@" in key},
                    key=lambda g: (g != "all", g))
    lines = [f"{'group':<16} {'n':>5} {'avg@' + str(k):>8} {'pass@1':>8} {'pass@' + str(k):>8} "
             f"{'maj@' + str(k):>8}"]
    for g in groups:
        row = [metrics.get(f"{g}/n", 0), metrics.get(f"{g}/avg@{k}", float("nan")),
               metrics.get(f"{g}/pass@1", float("nan")), metrics.get(f"{g}/pass@{k}", float("nan")),
               metrics.get(f"{g}/maj@{k}", float("nan"))]
        lines.append(f"{g:<16} {row[0]:>5.0f} " + " ".join(f"{v:>8.3f}" for v in row[1:]))
    return "\n".join(lines)
