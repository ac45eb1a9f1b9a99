"""Evaluation metrics over k samples per problem: Avg@k, Pass@k (unbiased), maj@k, per group;
the groups a problem counts under; the results table; each problem's results on disk.

Pure Python; inputs are per-problem lists of (correct, answer) for the k samples.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter, defaultdict
from math import comb
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data.synthetic import Problem


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c ({c}) <= n ({n}) and 1 <= k ({k}) <= n")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(correct: list[float], answers: list[str | None]) -> float:
    """maj@k: 1 if the most common extracted answer (ties: first seen) is a correct one."""
    votes = Counter(a for a in answers if a)
    if not votes:
        return 0.0
    top = votes.most_common(1)[0][0]
    return float(any(c >= 1.0 for c, a in zip(correct, answers) if a == top))


def summarize(results: list[dict], ks: tuple[int, ...] = (1,)) -> dict[str, float]:
    """Metrics over problems, overall and per ``group`` (e.g. 'L3' or 'countdown/L3').

    results: one dict per problem with ``correct`` (k floats), ``answers`` (k strings or None)
    and ``groups`` (names this problem counts under). Returns flat ``{name: value}`` with
    ``{group}/avg@k``, ``{group}/pass@j`` for j in ks, ``{group}/maj@k``, ``{group}/n``.
    """
    by_group: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        for g in ("all", *r.get("groups", ())):
            by_group[g].append(r)
    out: dict[str, float] = {}
    for g, rows in sorted(by_group.items()):
        k = min(len(r["correct"]) for r in rows)
        out[f"{g}/n"] = float(len(rows))
        out[f"{g}/avg@{k}"] = sum(sum(r["correct"]) / len(r["correct"]) for r in rows) / len(rows)
        for j in ks:
            if j <= k:
                out[f"{g}/pass@{j}"] = sum(
                    pass_at_k(len(r["correct"]), int(sum(c >= 1.0 for c in r["correct"])), j)
                    for r in rows) / len(rows)
        out[f"{g}/maj@{k}"] = sum(majority_correct(r["correct"], r["answers"])
                                  for r in rows) / len(rows)
    return out


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


def write_problem_records(path: Path, records: list[dict]) -> Path:
    """One JSON line per held-out problem (``problem_id``, ``correct``: the k rewards,
    ``answers``, ``groups``), written atomically (temporary file, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)
    return path


def read_problem_records(path: Path) -> dict[str, list[float]]:
    """{problem_id: its k rewards} from a file ``write_problem_records`` wrote."""
    out = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if row["problem_id"] in out:
            raise ValueError(f"{path}: problem {row['problem_id']!r} appears twice; problem ids "
                             f"must be unique within a held-out set")
        out[row["problem_id"]] = [float(c) for c in row["correct"]]
    return out


def decoding_name(temperature: float | None) -> str:
    """How a sweep decoding is named in keys and file names: 't0.6' for every token at 0.6,
    'own' (None) for the strategy's own policy."""
    return "own" if temperature is None else f"t{float(temperature):g}"


def problem_records(run_dir: Path, greedy: bool = False, tag: str | None = None,
                    first: bool = False) -> dict[str, list[float]] | None:
    """{problem_id: rewards} of a run's last evaluation (``evals/step_NNNNNN.jsonl``; ``greedy``:
    its greedy column; ``tag``, e.g. 'test_t0.6': that sweep decoding,
    ``step_NNNNNN_<tag>.jsonl``; ``first``: its first evaluation, the base model's at step 0),
    None if the run wrote none (an older run, eval.greedy=false, no eval.temperatures)."""
    tag = "_" + tag if tag else ("_greedy" if greedy else "")
    files = sorted(p for p in (Path(run_dir) / "evals").glob("step_*.jsonl")
                   if re.fullmatch(r"step_\d+" + re.escape(tag), p.stem))
    return read_problem_records(files[0 if first else -1]) if files else None
