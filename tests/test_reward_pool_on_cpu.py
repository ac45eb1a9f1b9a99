"""reward.pool: hard per-answer time limits, worker replacement, ordering and stats."""

import os
import time

import pytest

from reward.pool import RewardPool
from reward.score import check_reward, score

# A regression that stops killing stuck workers must fail, not hang the test run.
pytestmark = pytest.mark.timeout(60, method="thread")

TIMEOUT_S = 1.0
CD_META = {"numbers": [1, 3, 4, 6], "target": 24}


def _alive(pid: int) -> bool:
    # Workers are reaped with join() after SIGKILL, so a dead worker's PID no longer exists.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def flaky_score(task, response, gold, meta=None, format_weight=0.0):
    """Test scorer (module level so spawn can pickle it): misbehaves on command."""
    if response == "hang":
        sum(range(10**13))  # a C-level loop: no signal handler can interrupt it
    if response == "crash":
        os._exit(3)
    if response == "raise":
        raise RuntimeError("verifier bug")
    if response == "nan":
        return float("nan")
    if response in ("big", "negative"):
        return 1.5 if response == "big" else -0.1
    return score(task, response, gold, meta, format_weight)


@pytest.fixture(scope="module")
def math_pool():
    with RewardPool(num_workers=2, timeout_s=TIMEOUT_S) as pool:
        pool.score_batch([("arith", r"\boxed{1}", "1", None)] * 2)  # wait until workers are up
        yield pool


@pytest.fixture(scope="module")
def flaky_pool():
    with RewardPool(num_workers=2, timeout_s=TIMEOUT_S, score_fn=flaky_score, warmup=False) as pool:
        yield pool


def test_huge_exponent_times_out_and_others_are_scored(math_pool):
    items = [
        ("math", r"\boxed{\frac{1}{2}}", "0.5", None),
        ("math", r"\boxed{9^{9^{9^9}}}", "1", None),  # hostile: sympy big-int power
        ("math", r"\boxed{\dfrac{3}{4}}", "3/4", None),
        ("arith", r"\boxed{7}", "7", None),
        ("countdown", r"\boxed{6/(1-3/4)}", "", CD_META),
        ("math", r"\boxed{2}", "3", None),
    ]
    pids_before = math_pool.worker_pids()
    t0 = time.monotonic()
    rewards, stats = math_pool.score_batch(items)
    elapsed = time.monotonic() - t0
    assert rewards == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert stats["timeouts"] == 1 and stats["errors"] == 0
    assert stats["num_scored"] == 5 and stats["num_items"] == 6
    assert stats["worker_restarts"] == 1
    assert elapsed < TIMEOUT_S + 2.0
    # the stuck worker was killed by PID and replaced; the next batch works on the new one
    pids_after = math_pool.worker_pids()
    killed = set(pids_before) - set(pids_after)
    assert len(killed) == 1 and not _alive(killed.pop())
    rewards, stats = math_pool.score_batch([("math", r"\boxed{\frac{1}{2}}", "0.5", None)] * 4)
    assert rewards == [1.0] * 4 and stats["num_scored"] == 4 and stats["timeouts"] == 0


def test_order_is_preserved(math_pool):
    items = [("arith", rf"\boxed{{{i}}}", str(i if i % 3 else -1), None) for i in range(30)]
    rewards, stats = math_pool.score_batch(items)
    assert rewards == [1.0 if i % 3 else 0.0 for i in range(30)]
    assert stats["num_scored"] == 30 and stats["timeouts"] == stats["errors"] == 0


def test_hostile_inputs_through_the_pool(math_pool):
    items = [
        ("math", "x" * 1_000_000 + r"\boxed{42}", "42", None),  # 1 MB
        ("math", b"\xff\xfe\\boxed{42}\x80", "42", None),  # invalid UTF-8
        ("math", r"\boxed{" + "{" * 10_000 + "}" * 10_000 + "}", "1", None),  # deep braces
        ("countdown", r"\boxed{__import__('os').system('true')}", "", CD_META),
        ("math", "", "1", None),
        ("arith", r"\boxed{1}", "not an int", None),  # data error -> counted, reward 0
    ]
    rewards, stats = math_pool.score_batch(items)
    assert rewards == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert stats["errors"] == 1 and stats["timeouts"] == 0 and stats["num_scored"] == 5


def test_format_weight_is_applied_in_workers():
    with RewardPool(num_workers=1, timeout_s=5.0, format_weight=0.5, warmup=False) as pool:
        rewards, _ = pool.score_batch(
            [("arith", r"\boxed{1}", "1", None), ("arith", r"\boxed{2}", "1", None),
             ("arith", "1", "1", None)]
        )
    assert rewards == [1.0, 0.5, 0.0]


def test_c_level_hang_crash_and_exceptions(flaky_pool):
    items = [
        ("arith", "hang", "1", None),
        ("arith", r"\boxed{1}", "1", None),
        ("arith", "crash", "1", None),
        ("arith", "raise", "1", None),
        ("arith", "nan", "1", None),  # a reward outside [0, 1] is an error, not a reward
        ("arith", r"\boxed{2}", "2", None),
    ]
    t0 = time.monotonic()
    rewards, stats = flaky_pool.score_batch(items)
    assert time.monotonic() - t0 < TIMEOUT_S + 5.0  # includes starting two new workers
    assert rewards == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert stats["timeouts"] == 1 and stats["errors"] == 3 and stats["num_scored"] == 2
    assert stats["worker_restarts"] == 2  # the hung one and the crashed one
    assert all(_alive(pid) for pid in flaky_pool.worker_pids())
    rewards, stats = flaky_pool.score_batch([("arith", r"\boxed{3}", "3", None)] * 3)
    assert rewards == [1.0] * 3 and stats["worker_restarts"] == 0


def test_in_process_mode_matches_workers(math_pool):
    items = [
        ("math", r"\boxed{\frac{1}{2}}", "0.5", None),
        ("arith", r"\boxed{5}", "4", None),
        ("countdown", r"\boxed{6/(1-3/4)}", "", CD_META),
        ("arith", r"\boxed{5}", "x", None),
    ]
    local = RewardPool(num_workers=0)
    rewards, stats = local.score_batch(items)
    assert rewards == math_pool.score_batch(items)[0] == [1.0, 0.0, 1.0, 0.0]
    assert stats["errors"] == 1 and stats["num_scored"] == 3 and stats["timeouts"] == 0


def test_empty_batch(math_pool):
    rewards, stats = math_pool.score_batch([])
    assert rewards == [] and stats["num_items"] == 0


def test_bad_arguments_are_rejected_up_front(math_pool):
    with pytest.raises(ValueError, match="'poetry'.*math, arith, countdown"):
        math_pool.score_batch([("arith", r"\boxed{1}", "1", None), ("poetry", "x", "y", None)])
    with pytest.raises(ValueError, match="item 0.*tuple"):
        math_pool.score_batch([("arith", r"\boxed{1}", "1")])
    with pytest.raises(ValueError, match="timeout_s=0"):
        RewardPool(num_workers=1, timeout_s=0)
    with pytest.raises(ValueError, match=r"format_weight \(-0.1\)"):
        RewardPool(num_workers=1, format_weight=-0.1)
    with pytest.raises(ValueError, match="'fork'"):
        RewardPool(num_workers=1, start_method="fork")


def test_close_stops_workers():
    pool = RewardPool(num_workers=2, timeout_s=5.0, warmup=False)
    assert pool.score_batch([("arith", r"\boxed{1}", "1", None)])[0] == [1.0]
    pids = pool.worker_pids()
    pool.close()
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="after close"):
        pool.score_batch([("arith", r"\boxed{1}", "1", None)])


def test_bad_rewards_are_errors_in_process_as_in_workers(flaky_pool):
    """NaN and out-of-range rewards: reward 0 and an error on both paths (one check_reward)."""
    items = [("arith", "nan", "1", None), ("arith", "big", "1", None),
             ("arith", "negative", "1", None), ("arith", r"\boxed{1}", "1", None)]
    local = RewardPool(num_workers=0, score_fn=flaky_score)
    for pool in (local, flaky_pool):
        rewards, stats = pool.score_batch(items)
        assert rewards == [0.0, 0.0, 0.0, 1.0]
        assert stats["errors"] == 3 and stats["num_scored"] == 1
    assert check_reward(1) == 1.0 and check_reward(0.25) == 0.25
    with pytest.raises(ValueError, match=r"reward nan is outside \[0, 1\]"):
        check_reward(float("nan"))
