"""The ``rollout`` group's schema: ``RolloutConfig`` (re-exported by ``launch.config``, which
composes it into the run's ``RunConfig``). No heavy imports: the rollout actor and the engines
read it, and ``launch.config`` validates it with the rest of the run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from launch.checks import require as _require


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = "hf"
    """hf (transformers, the reference) | vllm (patched per-token-temperature sampler)"""
    num_actors: int = 1
    group_size: int = 8
    """G responses per prompt"""
    max_new_tokens: int = 64
    max_prompt_tokens: int = 128
    batch_size: int = 64
    """hf engine: sequences generated together"""
    kv_cache_gb: int = 1
    """vllm on CPU: VLLM_CPU_KVCACHE_SPACE"""
    gpu_memory_utilization: float = 0.5
    max_num_seqs: int = 256
    enforce_eager: Optional[bool] = None
    """vllm: null = CPU eager, GPU CUDA graphs (the head runs in compute_logits, outside them)"""
    vllm_runner: str = "auto"
    """vllm model runner: auto (vLLM's choice: V2 on GPU for dense models, V1 on CPU) | v1 | v2"""
    engine_core: str = "auto"
    """vllm engine core: auto (GPU: its own process, vLLM's default; CPU: inproc, measured
    faster there) | inproc (in the rollout actor) | process (its own process)"""
    tensor_parallel_size: int = 1
    """vllm: ranks per engine (one worker process each when > 1)"""
    weight_sync: str = "auto"
    """how learner weights reach the engines: collective (vLLM's weight-transfer API: learner rank
    0 broadcasts one layer at a time to every engine worker; NCCL on GPU, gloo on CPU; only names,
    dtypes and shapes go by RPC) | object_store (the learner's full state dict through Ray's
    object store to every rollout actor) | auto (collective with rollout.engine=vllm: it moves
    each weight once and holds one layer at a time, where the object store copies the whole model
    ~10 times; object_store with the transformers engine, which has no weight-transfer API, and
    with cluster.colocate, where an engine and a learner rank share a GPU that NCCL cannot span)"""
    top_p: float = 1.0
    """must stay 1.0: vLLM's log-probs must be those of softmax(z / tau) (see README)"""
    top_k: int = -1
    """must stay -1 (off), for the same reason"""

    def __post_init__(self):
        _require(self.engine in ("hf", "vllm"), "rollout.engine", self.engine,
                 "must be hf or vllm", "choose the group option rollout=hf or rollout=vllm")
        _require(self.vllm_runner in ("auto", "v1", "v2"), "rollout.vllm_runner", self.vllm_runner,
                 "must be auto, v1 or v2", "set rollout.vllm_runner=auto")
        _require(self.engine_core in ("auto", "inproc", "process"), "rollout.engine_core",
                 self.engine_core, "must be auto, inproc or process",
                 "set rollout.engine_core=auto")
        _require(self.weight_sync in ("auto", "collective", "object_store"), "rollout.weight_sync",
                 self.weight_sync, "must be auto, collective or object_store",
                 "set rollout.weight_sync=auto")
        _require(self.weight_sync != "collective" or self.engine == "vllm", "rollout.weight_sync",
                 self.weight_sync, "needs rollout.engine=vllm (the transformers engine has no "
                 "weight-transfer API)", "set rollout.weight_sync=object_store (or auto)")
        for key in ("num_actors", "group_size", "max_new_tokens", "max_prompt_tokens",
                    "batch_size", "kv_cache_gb", "max_num_seqs", "tensor_parallel_size"):
            value = getattr(self, key)
            _require(value >= 1, f"rollout.{key}", value, "must be >= 1",
                     f"set e.g. rollout.{key}={getattr(RolloutConfig, key)}")
        _require(0.0 < self.gpu_memory_utilization <= 1.0, "rollout.gpu_memory_utilization",
                 self.gpu_memory_utilization, "must be in (0, 1]",
                 "set e.g. rollout.gpu_memory_utilization=0.5")
        _require(self.top_p == 1.0 and self.top_k == -1, "rollout.top_p/top_k",
                 (self.top_p, self.top_k),
                 "must be 1.0/-1: truncated sampling would make the recorded log-probs differ from "
                 "log_softmax(z/tau), breaking the per-token temperature invariant",
                 "remove the override (control exploration with meta=... instead)")


def resolve_weight_sync(cfg: RolloutConfig, colocate: bool = False) -> str:
    """``rollout.weight_sync`` with ``auto`` decided: collective for the vLLM engine unless its
    devices are shared with the learners (``cluster.colocate``), else object_store."""
    if cfg.weight_sync != "auto":
        return cfg.weight_sync
    return "collective" if cfg.engine == "vllm" and not colocate else "object_store"
