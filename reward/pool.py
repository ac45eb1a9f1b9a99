"""A pool of worker processes that scores answers with a hard time limit per answer.

Why processes: math-verify's own time-out is a ``signal.alarm`` handler, which Python runs only
between bytecodes, so C-level work (the big-int power in ``\\boxed{9^{9^{9^9}}}``, a long sympy
simplification inside a C call) can run on for minutes. The only limit that always holds is to
kill the process doing it. So:

* each worker is one ``multiprocessing`` process (``spawn`` by default, or ``forkserver``: safe
  with torch / Ray / CUDA in the parent) with its own duplex pipe. It sets
  ``OMP_NUM_THREADS=1`` (and the MKL / OpenBLAS equivalents) first thing, imports the scorer
  and, with ``warmup=True``, scores one ``math`` item so that sympy is loaded, then reports
  ready. Start-up time never counts against an answer;
* the parent sends one item at a time to each ready worker and records its deadline
  (send time + ``timeout_s``). It waits on all pipes and process sentinels at once;
* an answer past its deadline gets reward 0 and counts as a time-out; its worker is killed by
  its own PID (SIGKILL) and a new one is started, which becomes available once ready, while the
  other workers go on;
* an exception in the scorer, or a reward outside [0, 1] (NaN included: ``check_reward``, applied
  by ``score_item`` here and in process alike), gives reward 0 and counts as an error (the worker
  lives on; the first message per batch is logged). A worker that dies mid-answer (segfault, OOM
  kill) counts as an error and is replaced. A worker that dies before it is ready raises
  ``RuntimeError``: that is a broken install, not a bad answer.

``score_batch`` returns ``(rewards, stats)``: rewards in input order, stats with
``num_items``, ``num_scored`` (finished within the limit, no error), ``timeouts``, ``errors``,
``worker_restarts`` and ``wall_s`` (plain names; the caller namespaces them, e.g.
``reward/timeouts``).

``num_workers=0`` scores in the calling process (debugging, tests): no limit beyond
math-verify's own alarm, and that only in the main thread; ``timeouts`` stays 0 there because
math-verify's time-outs surface as a plain 0.

The pool is a plain object, not thread-safe; a Ray actor wraps it and calls it serially.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait

from reward.score import check_format_weight, check_reward, check_task, score

logger = logging.getLogger(__name__)

Item = tuple  # (task: str, response: str | bytes, gold: str, meta: dict | None)
ScoreFn = Callable[..., float]

READY_TIMEOUT_S = 120.0
"""how long a new worker may take to import and warm up before the pool gives up"""
_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_WARMUP_ITEM = ("math", "\\boxed{\\frac{1}{2}}", "0.5", None)


def score_item(score_fn: ScoreFn, item: Item, format_weight: float) -> float:
    """One item's reward, checked (``check_reward``): what a worker and the in-process path run."""
    return check_reward(score_fn(*item, format_weight=format_weight))


def _worker_main(conn: Connection, score_fn: ScoreFn, format_weight: float, warmup: bool) -> None:
    """Worker loop: receive (index, item), reply (index, ok, reward_or_error). None stops it."""
    for name in _SINGLE_THREAD_ENV:
        os.environ[name] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if warmup:
        score_fn(*_WARMUP_ITEM, format_weight=format_weight)
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if msg is None:
            return
        index, item = msg
        try:
            conn.send((index, True, score_item(score_fn, item, format_weight)))
        except Exception as exc:  # noqa: BLE001 - a verifier error must never kill the worker
            conn.send((index, False, f"{type(exc).__name__}: {str(exc)[:500]}"))


class _Worker:
    """One worker process, its pipe, and the item it is working on."""

    def __init__(self, ctx, score_fn: ScoreFn, format_weight: float, warmup: bool):
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child_conn, score_fn, format_weight, warmup),
            daemon=True,
            name="reward-worker",
        )
        self.proc.start()
        child_conn.close()
        self.started = time.monotonic()
        self.ready = False
        self.index: int | None = None  # item being scored
        self.deadline = math.inf

    def kill(self) -> None:
        """SIGKILL this worker by its own PID and reap it."""
        if self.proc.is_alive():
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it exited in between
                pass
        self.proc.join(timeout=5.0)
        self.conn.close()


class RewardPool:
    """Score (task, response, gold, meta) items in worker processes, ``timeout_s`` per answer."""

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        format_weight: float = 0.0,
        score_fn: ScoreFn = score,
        start_method: str = "spawn",
        warmup: bool = True,
    ):
        if num_workers < 0 or timeout_s <= 0:
            raise ValueError(
                f"RewardPool needs num_workers >= 0 and timeout_s > 0, got num_workers="
                f"{num_workers}, timeout_s={timeout_s}; e.g. RewardPool(num_workers=2, timeout_s=5)"
            )
        check_format_weight(format_weight)
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(
                f"RewardPool start_method {start_method!r} must be 'spawn' or 'forkserver' "
                "(fork is unsafe with torch / Ray threads in the parent)"
            )
        self.num_workers, self.timeout_s = num_workers, timeout_s
        self.format_weight, self.score_fn, self.warmup = format_weight, score_fn, warmup
        self._ctx = mp.get_context(start_method)
        self._workers = [self._start_worker() for _ in range(num_workers)]

    # ------------------------------------------------------------------ lifecycle
    def _start_worker(self) -> _Worker:
        return _Worker(self._ctx, self.score_fn, self.format_weight, self.warmup)

    def close(self) -> None:
        """Stop all workers (politely, then by SIGKILL)."""
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self._workers:
            w.proc.join(timeout=1.0)
            w.kill()
        self._workers = []

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        """PIDs of the current workers (for tests and monitoring)."""
        return [w.proc.pid for w in self._workers]

    # ------------------------------------------------------------------ scoring
    def score_batch(self, items: Sequence[Item]) -> tuple[list[float], dict]:
        """Rewards for ``items`` in input order, and stats (module doc)."""
        for i, item in enumerate(items):
            if not isinstance(item, (tuple, list)) or len(item) != 4:
                raise ValueError(
                    f"reward item {i} is {type(item).__name__} of length "
                    f"{len(item) if hasattr(item, '__len__') else '?'}; each item must be a "
                    "tuple (task, response, gold, meta)"
                )
            check_task(item[0])
        t0 = time.monotonic()
        stats = dict(num_items=len(items), num_scored=0, timeouts=0, errors=0, worker_restarts=0)
        rewards = [0.0] * len(items)
        if self.num_workers == 0:
            self._score_in_process(items, rewards, stats)
        else:
            if not self._workers:
                raise RuntimeError("RewardPool.score_batch called after close(); build a new pool")
            try:
                self._score_in_workers(items, rewards, stats)
            except BaseException:
                # Leave no worker mid-item: a late reply would land in the next batch.
                for w in [w for w in self._workers if w.index is not None]:
                    self._replace(w, stats)
                raise
        stats["wall_s"] = time.monotonic() - t0
        return rewards, stats

    def _score_in_process(self, items: Sequence[Item], rewards: list[float], stats: dict) -> None:
        for i, item in enumerate(items):
            try:
                rewards[i] = score_item(self.score_fn, item, self.format_weight)
                stats["num_scored"] += 1
            except Exception as exc:  # noqa: BLE001 - as in a worker: scores 0, counted
                self._log_error(stats, i, f"{type(exc).__name__}: {exc}")

    def _log_error(self, stats: dict, index: int, message: str) -> None:
        if stats["errors"] == 0:
            logger.warning("reward item %d failed (reward 0): %s", index, message[:500])
        stats["errors"] += 1

    def _replace(self, worker: _Worker, stats: dict) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = self._start_worker()
        stats["worker_restarts"] += 1

    def _score_in_workers(self, items: Sequence[Item], rewards: list[float], stats: dict) -> None:
        todo = deque(range(len(items)))
        while todo or any(w.index is not None for w in self._workers):
            now = time.monotonic()
            for w in self._workers:  # hand work to idle ready workers
                if todo and w.ready and w.index is None:
                    w.index = todo.popleft()
                    w.conn.send((w.index, items[w.index]))
                    w.deadline = now + self.timeout_s
            next_deadline = min(
                [w.deadline for w in self._workers if w.index is not None]
                + [w.started + READY_TIMEOUT_S for w in self._workers if not w.ready],
                default=now + 1.0,
            )
            waitables = [w.conn for w in self._workers] + [w.proc.sentinel for w in self._workers]
            ready = set(wait(waitables, timeout=max(0.0, next_deadline - now)))
            now = time.monotonic()
            for w in list(self._workers):
                if w.conn in ready:  # a reply (or EOF if it died) comes before its deadline
                    self._receive(w, rewards, stats)
                elif w.proc.sentinel in ready:
                    self._on_death(w, stats)
                elif w.index is not None and now >= w.deadline:
                    stats["timeouts"] += 1
                    logger.warning(
                        "reward item %d took over %.1f s: reward 0, worker pid %d killed",
                        w.index, self.timeout_s, w.proc.pid,
                    )
                    self._replace(w, stats)
                elif not w.ready and now >= w.started + READY_TIMEOUT_S:
                    raise RuntimeError(
                        f"reward worker pid {w.proc.pid} was not ready after {READY_TIMEOUT_S} s; "
                        "check that `python -c 'import reward.math'` works in this environment"
                    )

    def _receive(self, w: _Worker, rewards: list[float], stats: dict) -> None:
        """Read one message from ``w``: 'ready' or a finished item."""
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):  # the pipe closed: the worker died
            self._on_death(w, stats)
            return
        if msg == "ready":
            w.ready = True
            return
        index, ok, value = msg
        if ok:
            rewards[index] = value
            stats["num_scored"] += 1
        else:
            self._log_error(stats, index, value)
        w.index, w.deadline = None, math.inf

    def _on_death(self, w: _Worker, stats: dict) -> None:
        """A worker exited on its own: fail its item (if any) and replace it."""
        if not w.ready:
            w.kill()
            raise RuntimeError(
                f"reward worker pid {w.proc.pid} died during start-up (exit code "
                f"{w.proc.exitcode}); run `python -c 'import reward.math'` to see the error"
            )
        if w.index is not None:
            self._log_error(
                stats, w.index, f"worker pid {w.proc.pid} died (exit code {w.proc.exitcode})"
            )
        self._replace(w, stats)
