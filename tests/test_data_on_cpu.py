"""Synthetic tasks (determinism, disjoint splits, verifiable solutions) and local-file loaders."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from data.loaders import DataError, load_problems
from data.synthetic import FAMILIES, LEVELS, generate, left_to_right_solution
from reward.score import score


def test_generation_is_deterministic_by_seed():
    a = generate(200, "train", seed=3)
    b = generate(200, "train", seed=3)
    c = generate(200, "train", seed=4)
    assert [p.prompt for p in a] == [p.prompt for p in b]
    assert [p.prompt for p in a] != [p.prompt for p in c]


def test_every_family_and_level_is_covered_evenly_and_eval_is_unique():
    probs = generate(500, "eval", seed=0)
    cells = Counter((p.task, p.level) for p in probs)
    assert set(cells) == {(f, lvl) for f in FAMILIES for lvl in LEVELS}
    assert set(cells.values()) == {50}
    assert len({p.prompt for p in probs}) == 500


def test_worked_solutions_are_correct_under_the_verifiers():
    """The pre-training targets must score 1 with the same verifiers RL uses."""
    for p in generate(400, "train", seed=1):
        assert score(p.task, p.solution, p.answer, p.meta) == 1.0, p


def test_difficulty_grows_with_level():
    """Harder levels have longer solutions (more steps) and, for countdown, more numbers."""
    probs = generate(1000, "train", seed=0)
    for fam in FAMILIES:
        mean_len = [sum(len(p.solution) for p in probs if p.task == fam and p.level == lvl) /
                    sum(1 for p in probs if p.task == fam and p.level == lvl) for lvl in LEVELS]
        assert mean_len[0] < mean_len[2] < mean_len[4], (fam, mean_len)
    numbers = {p.level: len(p.meta["numbers"]) for p in probs if p.task == "countdown"}
    assert numbers[1] == 2 and numbers[5] == 4


def test_bad_generation_requests_are_clear():
    with pytest.raises(ValueError, match="unknown task family"):
        generate(10, families=("algebra",))
    with pytest.raises(ValueError, match="level 9"):
        generate(10, levels=(9,))
    with pytest.raises(ValueError, match="split"):
        generate(10, split="test")


# ----------------------------------------------------------------------------- loaders


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_math_rows_take_gold_from_boxed_solution_or_answer(tmp_path):
    f = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "What is 1+1?", "solution": "It is \\boxed{2}.", "level": "Level 2",
         "subject": "Algebra"},
        {"problem": "Half of one?", "answer": "\\frac{1}{2}", "level": 3},
    ])
    a, b = load_problems(f, "auto")
    assert (a.answer, a.level, a.task, a.meta["subject"]) == ("2", 2, "math", "Algebra")
    assert (b.answer, b.level) == ("\\frac{1}{2}", 3)


def test_gsm8k_rows_take_gold_after_hashes(tmp_path):
    f = write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": "Tom has 1,200 apples...", "answer": "steps...\n#### 1,200"}])
    (p,) = load_problems(f, "gsm8k")
    assert p.answer == "1200" and p.prompt.startswith("Tom")


def test_parquet_and_answer_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "aime.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "Find x.", "answer": 204},
                                         {"problem": "Find y.", "answer": 17}]), path)
    probs = load_problems(path, "answer")
    assert [p.answer for p in probs] == ["204", "17"]


def test_bad_rows_are_skipped_with_one_warning_and_counted(tmp_path, caplog):
    good = [{"problem": f"Q{i}", "answer": str(i)} for i in range(20)]
    bad = ["{not json", {"problem": "", "answer": "1"}, {"problem": 5, "answer": "1"}]
    f = write_jsonl(tmp_path / "mixed.jsonl", good + bad)
    with caplog.at_level(logging.WARNING):
        probs = load_problems(f, "answer", max_bad_fraction=0.2)
    assert len(probs) == 20
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 of 23" in warnings[0].getMessage()


def test_too_many_bad_rows_is_an_error_naming_the_fix(tmp_path):
    f = write_jsonl(tmp_path / "wrong.jsonl",
                    [{"text": "x"}] * 5 + [{"problem": "Q", "answer": "1"}])
    with pytest.raises(DataError, match="max_bad_fraction"):
        load_problems(f, "auto", max_bad_fraction=0.1)
    with pytest.raises(DataError, match="does not exist"):
        load_problems(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="suffix"):
        load_problems(write_jsonl(tmp_path / "x.csv", ["a,b"]))


def test_left_to_right_solutions_ignore_precedence_but_not_parentheses():
    from reward.extract import last_boxed

    assert left_to_right_solution("3+4*2") == r"3+4=7. 7*2=14. \boxed{14}"
    assert left_to_right_solution("2*(3+4*5)") == r"3+4=7. 7*5=35. 2*35=70. \boxed{70}"
    assert left_to_right_solution("12-3*(4-1)") == r"12-3=9. 4-1=3. 9*3=27. \boxed{27}"
    arith = [p for p in generate(400, "train") if p.task == "arith"]
    careless = [last_boxed(left_to_right_solution(p.prompt[len("Compute "):-1])) for p in arith]
    wrong = [p for p, a in zip(arith, careless) if score(p.task, rf"\boxed{{{a}}}", p.answer,
                                                         p.meta) < 1.0]
    assert 0 < len(wrong) < len(arith)  # only where precedence changes the answer
    assert all(p.level >= 2 for p in wrong)


def test_the_careless_fraction_of_pretraining_solutions():
    from launch.build_model import TinyModelSpec, sft_texts

    clean = sft_texts(TinyModelSpec(sft_examples=600))
    mixed = sft_texts(TinyModelSpec(sft_examples=600, sft_left_to_right=0.8))
    assert [q for q, _ in clean] == [q for q, _ in mixed]
    changed = [(q, a) for (q, a), (_, b) in zip(clean, mixed) if a != b]
    assert changed and all("Compute" in q for q, _ in changed)
    sensitive = sum(1 for q, a in clean if "Compute" in q and a != left_to_right_solution(
        q.split("Compute ")[1].split(".<|im_end|>")[0]))
    assert 0.7 * sensitive < len(changed) < 0.9 * sensitive
