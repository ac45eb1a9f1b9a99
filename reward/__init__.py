"""Verifiable rewards: maths answers (math-verify) and synthetic-task verifiers, scored in a pool
of worker processes with a hard time limit per answer.

    from reward import RewardPool, score
    score("arith", "... \\boxed{42}", "42")                       # 1.0, in process
    with RewardPool(num_workers=2, timeout_s=5.0) as pool:
        rewards, stats = pool.score_batch([(task, response, gold, meta), ...])

Modules: ``extract`` (last \\boxed{}), ``synthetic`` (arith, countdown), ``math`` (math-verify;
the only heavy import, loaded on first use), ``score`` (dispatch + format reward), ``pool``.
"""

from reward.pool import RewardPool
from reward.score import TASKS, score

__all__ = ["RewardPool", "TASKS", "score"]
