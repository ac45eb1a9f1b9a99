"""Known, harmless lines kept off the console: one list, applied in the driver and in every Ray
worker process (``quiet_worker`` is the cluster's ``worker_process_setup_hook``, set by
``launch.cluster.start_ray``).

Two kinds:

- ``RAY_NOISE``, always: Ray's "Started a local Ray instance. View the dashboard at ..." and its
  "Token authentication is enabled ..." notice. The trainer prints its own dashboard line, which
  also says how to sign in (``dashboard_line``), so these would only repeat it.
- ``CPU_NOISE``, only when the actors are known to run on CPUs (``launch.cluster.known_cpu_only``):
  what vLLM's CPU build and its dependencies print at every start of the embedded default and
  that is expected there: eager mode (torch.compile and CUDA graphs are GPU features), no
  tcmalloc / Intel OpenMP preloaded, no Triton CPU backend (so model runner V1), the engine's
  seed note, the CPU worker's refusal of ``torch.set_num_threads`` (once per call, four times),
  the deprecation of raw prompts, DeepSpeed's accelerator detection and torch's
  ``torch.distributed.reduce_op`` FutureWarnings (from vLLM's Triton dispatcher), and the
  "Loading weights" progress bars of transformers. On a GPU the same lines mean something (a
  GPU engine in eager mode is slow, a missing Triton there is a broken install), so they are left
  alone.

Only records below ERROR whose message starts with one of the listed prefixes are dropped, on the
named loggers only: an error, or any other line, always gets through. To see everything, set
``TEMPO_QUIET=0`` in the driver's environment (it reaches the workers too). What is left on a
CPU start: vLLM's NUMA-binding note (printed by torch's C++ code, beyond Python's logging) and
vLLM's "Loading safetensors checkpoint shards" bar, both once per engine.
"""

from __future__ import annotations

import logging
import os
import warnings

# logger name -> message prefixes dropped there (below ERROR)
RAY_NOISE: dict[str, tuple[str, ...]] = {
    "ray._private.worker": ("Started a local Ray instance",),
    "ray._private.authentication.authentication_token_setup": (
        "Token authentication is enabled for this Ray cluster",),
}
CPU_NOISE: dict[str, tuple[str, ...]] = {
    "vllm.engine.arg_utils": ("The global random seed is set to",),
    "vllm.config.vllm": ("Enforce eager set", "Inductor compilation was disabled",
                         "Model Runner V2 requires Triton; using the V1 model runner"),
    "vllm.platforms.cpu": ("Triton is not installed. triton-cpu is expected",
                           "Reset SSM cache type to float32"),
    "vllm.triton_utils.importing": ("Triton is installed, but doesn't include CPU backend",),
    "vllm.v1.worker.cpu_worker": ("libtcmalloc is not found in LD_PRELOAD",
                                  "libiomp is not found in LD_PRELOAD",
                                  "CPU backend doesn't allow to use `torch.set_num_threads`"),
    "vllm.v1.engine.input_processor": ("Passing raw prompts to InputProcessor is deprecated",),
    "DeepSpeed": ("Setting accelerator to CPU",),
}
# (message regex, category) of Python warnings dropped on CPU
CPU_WARNINGS = ((r"`torch\.distributed\.reduce_op` is deprecated", FutureWarning),)

ENV_SWITCH = "TEMPO_QUIET"  # 0 = filter nothing
WORKER_HOOK = "launch.quiet.quiet_worker"


class KnownNoise(logging.Filter):
    """Drops a logger's records below ERROR whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is shown, never hidden
            return True
        return not message.startswith(self.prefixes)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def _install(noise: dict[str, tuple[str, ...]]) -> None:
    """A KnownNoise filter on each named logger (once per logger). A logger's own filters outlive
    the logging configurations that vLLM and Ray apply later (``dictConfig`` resets the handlers
    and levels of the loggers below the ones it configures, not their filters), and they see
    records logged before any handler exists (printed by Python's last-resort handler)."""
    for name, prefixes in noise.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownNoise) and f.prefixes == prefixes for f in logger.filters):
            logger.addFilter(KnownNoise(prefixes))


def quiet_known_noise(cpu: bool) -> None:
    """Apply the filters in this process: Ray's always, the CPU list when `cpu`. Call it before
    the libraries print; idempotent."""
    if not enabled():
        return
    _install(RAY_NOISE)
    if not cpu:
        return
    _install(CPU_NOISE)
    for message, category in CPU_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def hide_load_bars() -> None:
    """No "Loading weights" progress bars from transformers in this process (CPU runs). Call it
    after any model download: transformers shares the switch with huggingface_hub's download
    bars."""
    if not enabled():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers loads
    import sys

    if "transformers" in sys.modules:  # already loaded: switch its bars off directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def quiet_worker() -> None:
    """Ray's ``worker_process_setup_hook`` of a CPU run: runs in every worker process before its
    first task or actor, so before vLLM or DeepSpeed is imported there (workers download
    nothing: the driver resolved the model folder)."""
    quiet_known_noise(cpu=True)
    hide_load_bars()


def ray_token_file() -> str | None:
    """Where the Ray dashboard's sign-in token is, if Ray's token authentication is on in this
    process (Ray turns it on by default for a local cluster and keeps the token in
    ``~/.ray/auth_token``; ``$RAY_AUTH_TOKEN`` or ``$RAY_AUTH_TOKEN_PATH`` replace that file);
    None when it is off."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        if not is_token_auth_enabled():
            return None
    except Exception:  # noqa: BLE001 - an older or newer Ray without this module: say nothing
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    return os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token"


def dashboard_line(url: str) -> str:
    """The console line that gives the dashboard's address and, with token authentication on,
    how to sign in (the page asks for the token before it shows anything)."""
    token = ray_token_file()
    if token is None:
        return f"Ray dashboard: {url}"
    return (f"Ray dashboard: {url} (sign in with the token in {token}; "
            f"`{_ray_cli()} get-auth-token` prints it)")


def _ray_cli() -> str:
    """The `ray` command of this interpreter's environment (relative to the working directory
    when inside it, e.g. ``.venv/bin/ray``); plain ``ray`` if there is none."""
    import sys

    path = os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(path):
        return "ray"
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
