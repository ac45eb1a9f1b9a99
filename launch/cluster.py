"""The Ray cluster a run starts or joins: ``start_ray``, the worker processes' environment, and
whether the actors surely run on CPUs (``known_cpu_only``: the console filter and DeepSpeed's CPU
accelerator depend on it)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from launch.config import RunConfig

WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
              "RAY_DEDUP_LOGS": "0",
              # vLLM's INFO lines (its whole engine config, per engine) drown the per-step line;
              # set VLLM_LOGGING_LEVEL=INFO in the driver's environment to see them again
              "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}


def start_ray(run: RunConfig, num_actors: int) -> str | None:
    """Start (or join) the Ray cluster; returns the dashboard URL, if any. The known, harmless
    start-up lines are filtered in the driver and, on a CPU run, in every worker process
    (``launch.quiet``; the workers by Ray's ``worker_process_setup_hook``)."""
    import signal

    import ray

    from launch import quiet
    from launch.signals import exit_on_sigterm, keep_handlers

    if ray.is_initialized():
        return None
    root = str(Path(__file__).resolve().parents[1])  # workers import the project from here
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**WORKER_ENV, "PYTHONPATH": path, **device_env(run)}
    cpu = known_cpu_only(run)
    quiet.quiet_known_noise(cpu)
    if cpu:
        quiet.hide_load_bars()  # the driver's model is resolved (downloaded) by now
    runtime_env = {"env_vars": env}
    if cpu and quiet.enabled():
        runtime_env["worker_process_setup_hook"] = quiet.WORKER_HOOK
    kwargs = dict(namespace=run.cluster.namespace, runtime_env=runtime_env,
                  include_dashboard=run.cluster.dashboard, log_to_driver=True)
    with keep_handlers():  # the entry point's SIGINT / SIGTERM handlers, not Ray's
        if run.cluster.address:
            ctx = ray.init(address=run.cluster.address, **kwargs)
        else:
            cpus = run.cluster.num_cpus or max(os.cpu_count() or 1, num_actors)
            kwargs["dashboard_host"] = run.cluster.dashboard_host
            # "local": always a new cluster; with no address, ray.init would join the last one that
            # `ray start` left on this machine (/tmp/ray/ray_current_cluster) and reject num_cpus
            ctx = ray.init(address="local", num_cpus=cpus, **kwargs)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # none set by a caller
        exit_on_sigterm()  # SIGTERM still exits through the clean-up (finally: ray.shutdown)
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url


def device_env(run: RunConfig) -> dict[str, str]:
    """Worker environment for CPU-only runs: DeepSpeed's CPU accelerator (and, for an explicit
    cluster.device=cpu, no visible GPUs). GPU runs and joined clusters of unknown kind get none:
    the learner sets DS_ACCELERATOR=cpu itself when its process has no CUDA."""
    if run.cluster.device == "cpu":
        return {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    return {"DS_ACCELERATOR": "cpu"} if known_cpu_only(run) else {}


def known_cpu_only(run: RunConfig) -> bool:
    """True when the actors surely run on CPUs: cluster.device=cpu, or auto on a local cluster of
    a machine without CUDA (a joined cluster's kind is unknown here)."""
    return run.cluster.device == "cpu" or (run.cluster.device == "auto" and not run.cluster.address
                                           and not torch.cuda.is_available())
