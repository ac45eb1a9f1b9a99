"""One entry point for every verifiable reward: ``score(task, response, gold, meta)`` in [0, 1].

Tasks (``TASKS``): ``math`` (math-verify, ``reward.math``; imported on first use because sympy is
slow to import), ``arith`` and ``countdown`` (exact, ``reward.synthetic``). ``gold`` is the gold
answer string; ``countdown`` ignores it and reads ``meta = {"numbers": [...], "target": int}``.

Format reward: with ``format_weight`` w > 0 the reward is ``(1 - w) * correct + w * has_boxed``
where ``has_boxed`` is 1 when the response has a complete, non-blank ``\\boxed{}``; it stays in
[0, 1] and a correct answer always scores 1.

Errors in the *data* (a gold that is not an integer for ``arith``, bad countdown meta, an
unparseable maths gold) raise ``ValueError``; the pool counts them as errors. A bad *answer* is
never an error, only reward 0.
"""

from __future__ import annotations

from reward.extract import has_boxed
from reward.synthetic import arith_reward, countdown_reward

TASKS = ("math", "arith", "countdown")
"""the task names that ``score`` understands"""


def check_task(task: str) -> None:
    """Raise ValueError if ``task`` is not one of ``TASKS``."""
    if task not in TASKS:
        raise ValueError(
            f"unknown reward task {task!r}; the task must be one of {', '.join(TASKS)}: "
            "set the dataset's task field (or data.task) to one of them"
        )


def check_format_weight(format_weight: float) -> None:
    """Raise ValueError if ``format_weight`` is not in [0, 1]."""
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(
            f"reward format_weight ({format_weight}) must be in [0, 1]; "
            "use 0 for correctness only, e.g. 0.1 for a small bonus for a \\boxed{} answer"
        )


def check_reward(reward: float) -> float:
    """``reward`` as a float; ValueError unless it is in [0, 1] (NaN included): a scorer bug.

    The pool applies it to every reward it returns, in worker processes and in process alike
    (``reward.pool.score_item``), so both paths turn a bad value into an error, never a reward.
    """
    value = float(reward)
    if not 0.0 <= value <= 1.0:  # also catches NaN
        raise ValueError(f"reward {value} is outside [0, 1]; fix the scorer")
    return value


def correctness(task: str, response: str | bytes, gold: str, meta: dict | None = None) -> float:
    """1.0 if the response's final answer is correct for ``task``, else 0.0."""
    check_task(task)
    if task == "math":
        from reward.math import math_reward  # heavy (sympy): only where maths is scored

        return math_reward(response, gold)
    if task == "arith":
        return arith_reward(response, gold)
    return countdown_reward(response, meta)


def score(
    task: str,
    response: str | bytes,
    gold: str,
    meta: dict | None = None,
    format_weight: float = 0.0,
) -> float:
    """Reward in [0, 1] of one response: correctness, optionally mixed with a format bonus."""
    check_format_weight(format_weight)
    correct = correctness(task, response, gold, meta)
    if format_weight == 0.0:
        return correct
    return (1.0 - format_weight) * correct + format_weight * float(has_boxed(response))
