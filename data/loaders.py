"""Local datasets in the usual maths schemas -> ``Problem`` rows (no hub access here).

Formats (``data.format``):
- ``math``: MATH / MATH-500 rows ``{problem, solution | answer, level?, subject?}``; the gold is
  ``answer`` if present, else the last ``\\boxed{}`` of ``solution``; ``level`` may be an int or
  ``"Level 3"``.
- ``gsm8k``: ``{question, answer}`` where the answer ends in ``#### 42``.
- ``answer``: AIME / AMC / OlympiadBench / Minerva style ``{problem | question, answer}``.
- ``auto``: the first of the above whose required fields a row has.

Malformed rows (missing fields, wrong types, empty text, no extractable answer) are skipped and
counted; one summary warning is logged, and more than ``max_bad_fraction`` bad rows is an error
(a wrong file or wrong format, most likely).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

from data.synthetic import Problem

log = logging.getLogger(__name__)

FORMATS = ("auto", "math", "gsm8k", "answer")


class BadRow(ValueError):
    """A row that cannot become a Problem; the message says why."""


class DataError(ValueError):
    """A whole file is unusable; the message names the file, the rule and a fix."""


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local .jsonl / .json (list) / .parquet file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist; check data.train_path/eval_path")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise DataError(f"{path} holds a JSON {type(rows).__name__}, expected a list of rows")
        return rows
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    rows.append(BadRow(f"line {n}: not JSON ({e.msg})"))
        return rows
    raise DataError(f"data file {path} has suffix {suffix!r}; use .jsonl, .json or .parquet")


def _text(row: dict, *keys: str) -> str | None:
    for key in keys:
        value = row.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise BadRow(f"field {key!r} is {type(value).__name__}, expected text")
            if not value.strip():
                raise BadRow(f"field {key!r} is empty")
            return value.strip()
    return None


def _level(value) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.search(r"\d+", str(value))
    return int(match.group()) if match else 0


def _detect(row: dict) -> str:
    if "problem" in row and ("solution" in row or "answer" in row) and (
            "solution" in row or "level" in row or "subject" in row):
        return "math"
    if "question" in row and isinstance(row.get("answer"), str) and "####" in row["answer"]:
        return "gsm8k"
    if ("problem" in row or "question" in row) and "answer" in row:
        return "answer"
    raise BadRow(f"no known schema in keys {sorted(row)}; expected problem+solution/answer "
                 "(math), question+answer with #### (gsm8k) or problem/question+answer")


def to_problem(row, fmt: str, index: int, source: str) -> Problem:
    """One row -> Problem, or BadRow saying why not."""
    from reward.extract import last_boxed

    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, dict):
        raise BadRow(f"row is {type(row).__name__}, expected an object")
    fmt = _detect(row) if fmt == "auto" else fmt
    if fmt == "gsm8k":
        question, full = _text(row, "question"), _text(row, "answer")
        if question is None or full is None:
            raise BadRow("gsm8k rows need 'question' and 'answer'")
        if "####" not in full:
            raise BadRow("gsm8k answer has no '#### <answer>' line")
        gold = full.rsplit("####", 1)[1].strip().replace(",", "")
        solution, level = full, 0
    else:
        question = _text(row, "problem", "question")
        if question is None:
            raise BadRow("row has no 'problem' or 'question'")
        raw_answer = row.get("answer")
        if isinstance(raw_answer, (int, float)):
            gold = str(raw_answer).strip()
        else:
            gold = _text(row, "answer")
        solution = _text(row, "solution") or ""
        if gold is None and solution:
            gold = last_boxed(solution)
        level = _level(row.get("level"))
    if not gold:
        raise BadRow("no gold answer (no 'answer' field and no \\boxed{} in 'solution')")
    meta = {k: row[k] for k in ("subject", "unique_id", "source") if k in row}
    return Problem(f"{source}-{index}", "math", question, gold, solution, level, meta)


def load_problems(path: str | Path, fmt: str = "auto",
                  max_bad_fraction: float = 0.1) -> list[Problem]:
    """All good rows of ``path`` as Problems; bad rows skipped with a count and one warning."""
    if fmt not in FORMATS:
        raise DataError(f"data.format ({fmt!r}) must be one of {FORMATS}; set data.format=auto")
    rows = read_rows(path)
    problems, reasons = [], Counter()
    for i, row in enumerate(rows):
        try:
            problems.append(to_problem(row, fmt, i, Path(path).stem))
        except BadRow as e:
            reasons["not JSON" if str(e).startswith("line ") else str(e)] += 1
    bad = sum(reasons.values())
    if rows and bad:
        log.warning("%s: skipped %d of %d rows (%s)", path, bad, len(rows),
                    "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3)))
    if not rows or bad > max_bad_fraction * len(rows):
        raise DataError(
            f"{path}: {bad} of {len(rows)} rows are unusable, more than data.max_bad_fraction "
            f"({max_bad_fraction}); most common: {reasons.most_common(1)}. Check data.format "
            f"({fmt}) matches the file, or raise data.max_bad_fraction")
    return problems
