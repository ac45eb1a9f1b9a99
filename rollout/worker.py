"""``RolloutWorker``: what a rollout actor runs: one engine, its own copy of the strategy.

A plain object (``launch.trainer`` wraps it in a Ray actor). The engine is chosen by
``rollout.engine``: ``hf`` (transformers, the reference) or ``vllm`` (patched sampler). The
strategy's per-token path runs inside the engine; per-request temperatures come in with the
requests (planned by the meta actor), and learned weights (θ, and φ as ``temperature_head.*``)
arrive by ``load_weights``.
"""

from __future__ import annotations

import contextlib
import os
import random

import torch

from meta.base import TemperatureStrategy
from rollout.base import RolloutRequest
from rollout.config import RolloutConfig
from rollout.trajectory import TrajectoryBatch
from rollout.weight_transfer import backend_for


def build_engine(model_path: str, strategy: TemperatureStrategy, cfg: RolloutConfig,
                 dtype: str = "float32", seed: int = 0, weight_sync: str = "object_store"):
    """The configured engine over ``model_path`` driving ``strategy``; ``weight_sync``
    (``rollout.config.resolve_weight_sync``): collective joins vLLM's weight-transfer API."""
    if cfg.engine == "hf":
        from rollout.hf_engine import HFEngine

        return HFEngine.from_path(model_path, strategy, dtype=dtype,
                                  max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    from rollout.vllm_engine import VLLMEngine

    gpu = torch.cuda.is_available()
    return VLLMEngine(model_path, strategy, dtype=dtype,
                      max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
                      max_new_tokens=cfg.max_new_tokens, kv_cache_gb=cfg.kv_cache_gb,
                      gpu_memory_utilization=cfg.gpu_memory_utilization,
                      max_num_seqs=cfg.max_num_seqs, seed=seed,
                      enforce_eager=not gpu if cfg.enforce_eager is None else cfg.enforce_eager,
                      runner=cfg.vllm_runner, tensor_parallel_size=cfg.tensor_parallel_size,
                      engine_core=resolve_engine_core(cfg.engine_core, gpu),
                      weight_transfer=backend_for(gpu) if weight_sync == "collective" else None)


def resolve_engine_core(engine_core: str, gpu: bool) -> str:
    """``rollout.engine_core=auto``: vLLM's default (its own process) on GPU; in this process on
    CPU, where it was measured faster on the embedded default (README, Performance)."""
    if engine_core != "auto":
        return engine_core
    return "process" if gpu else "inproc"


class RolloutWorker:
    def __init__(self, model_path: str, strategy: TemperatureStrategy, cfg: RolloutConfig,
                 dtype: str = "float32", seed: int = 0, worker_index: int = 0,
                 weight_sync: str = "object_store"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        self.worker_index = worker_index
        self.seed = seed
        random.seed(seed + worker_index)
        torch.manual_seed(seed + worker_index)
        self.engine = build_engine(model_path, strategy, cfg, dtype, seed + worker_index,
                                   weight_sync)
        self.strategy = strategy
        """the run's strategy (``set_decoding`` may have the engine sample with another)"""
        self.train_mode = strategy.spec()["kwargs"].get("temperature_mode", "sample")
        """its temperature mode as built (training's), which ``set_decoding()`` restores"""
        self.weight_version = 0
        """learner updates the engine's weights have had (0 = the model folder's); set by the
        trainer with each weight sync, stamped on every batch (TrajectoryBatch.policy_version)"""
        self.stale = _restarted_actor()
        """a Ray actor restarted after a crash holds the model folder's weights, not the run's:
        it refuses to generate until the trainer has sent it the current ones"""

    def generate(self, requests: list[RolloutRequest], step: int, seed: int,
                 greedy: bool = False) -> TrajectoryBatch:
        """Responses for ``requests`` (seeded per step and worker, so a retried step repeats)."""
        if self.stale:
            raise StaleWeightsError(f"rollout worker {self.worker_index} restarted and has not "
                                    "been sent the run's current weights yet")
        kwargs = {"greedy": True} if greedy else {}
        with self._engine_call():
            batch = self.engine.generate(requests, step=step, seed=seed * 1000 + self.worker_index,
                                         **kwargs)
        batch.policy_version = self.weight_version
        return batch

    def generate_texts(self, requests: list[RolloutRequest], step: int, seed: int,
                       greedy: bool = False) -> list[str]:
        """Only the decoded responses (evaluation: no tensors leave the actor)."""
        return self.generate(requests, step, seed, greedy).response_texts

    def load_weights(self, state_dict: dict, version: int | None = None) -> float:
        """Load θ and/or φ weights (after learner update number ``version``, when given);
        returns the seconds the engine took."""
        with self._engine_call():
            seconds = self.engine.load_weights(state_dict)
        if version is not None:
            self.weight_version = int(version)
        return seconds

    def load_all_weights(self, state_dict: dict, version: int | None = None) -> float:
        """Load a FULL set of the run's weights (θ, and φ where there is a head): the resync
        after a restart, which clears ``stale``."""
        seconds = self.load_weights(state_dict, version)
        self.stale = False
        return seconds

    # vLLM's weight-transfer protocol (rollout.weight_transfer.RolloutSyncClient calls these from
    # the learner's rank 0, all rollout actors at once, while it broadcasts the bytes)

    def init_weight_transfer(self, init_info: dict) -> None:
        with self._engine_call():
            self.engine.init_weight_transfer(init_info)

    def start_weight_update(self) -> None:
        with self._engine_call():
            self.engine.start_weight_update()

    def update_weights(self, update_info: dict) -> None:
        with self._engine_call():
            self.engine.update_weights(update_info)

    def finish_weight_update(self, version: int | None = None, full: bool = False) -> float:
        """End a collective sync: the weights of learner update ``version``; ``full`` (every
        weight the run trains) clears a restarted actor's refusal to generate. Returns the
        engine's seconds for the whole update."""
        with self._engine_call():
            seconds = self.engine.finish_weight_update()
        if version is not None:
            self.weight_version = int(version)
        self.stale = self.stale and not full
        return seconds

    def shutdown_weight_transfer(self) -> None:
        with self._engine_call():
            self.engine.shutdown_weight_transfer()

    def set_decoding(self, mode: str | None = None, temperature: float | None = None) -> None:
        """Evaluation: with ``temperature``, every token at that one temperature whatever the
        run's strategy (IntroLLM's head, EAD and EDT set aside); without, the run's strategy
        again, in ``mode`` 'sample' (draw) or 'mean' (the mean action) where it has that mode
        (``strategy.temperature_modes``; the others sample as always); no mode: the one it was
        built with (how it trains)."""
        from meta.heuristics import FixedTemperature

        mode = mode or self.train_mode
        strategy = self.strategy if temperature is None else FixedTemperature(temperature)
        if temperature is None and mode in strategy.temperature_modes:
            strategy.set_temperature_mode(mode)
        elif strategy is self.engine.strategy:
            return  # nothing to change
        with self._engine_call():  # the vLLM engine's workers rebuild it from its spec
            self.engine.set_strategy(strategy)

    @contextlib.contextmanager
    def _engine_call(self):
        """Every call into the engine: if it fails because a process of the engine died, this
        actor exits (``exit_if_engine_died``), so that Ray restarts it and retries the call; a
        weight sync or a mode switch on a dead engine recovers as a generation does."""
        try:
            yield
        except Exception:
            exit_if_engine_died(self.engine, self.worker_index)
            raise

    def ping(self) -> int:
        return os.getpid()


def exit_if_engine_died(engine, worker_index: int) -> None:
    """A vLLM engine whose engine-core or tensor-parallel worker process died cannot recover in
    place: end this actor's process, so that Ray restarts the actor (a fresh engine, resynced by
    the trainer) and retries the call, as for a killed rollout actor."""
    if engine.alive():
        return
    import logging

    logging.getLogger(__name__).error(
        "rollout worker %d: a process of its vLLM engine died; exiting so that Ray restarts it",
        worker_index)
    os._exit(70)


class StaleWeightsError(RuntimeError):
    """A restarted rollout worker was asked to generate before it got the current weights."""


def _restarted_actor() -> bool:
    import warnings

    try:
        import ray

        with warnings.catch_warnings():  # Ray's property reads its own deprecated actor_id
            warnings.simplefilter("ignore", DeprecationWarning)
            return (ray.is_initialized()
                    and ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 - not inside a Ray actor
        return False
