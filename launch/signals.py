"""Signal handling shared by the entry points (``launch.run``, ``launch.evaluate``) and the
trainer, which puts the entry point's handlers back after ``ray.init`` (``keep_handlers``).

``launch.run`` stops on SIGINT (Ctrl-C) and SIGTERM (a plain `kill`, a scheduler's pre-emption)
the same way: ``Interrupted`` is raised where the driver is, the ``finally`` blocks shut the
actors, Ray and wandb down, and ``stop_line`` prints one line with the step reached, the last
checkpoint and the command that resumes the run. Ray's own processes (raylet, workers) block
SIGINT, so a Ctrl-C that reaches the whole terminal's process group stops the driver alone.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path


def exit_on_sigterm() -> None:
    """SIGTERM exits through ``finally`` blocks (``SystemExit(143)``), so a run shuts its actors
    and wandb down cleanly (``launch.evaluate``; ``launch.run`` uses ``stop_on_signals``). Main
    thread only (a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class Interrupted(BaseException):
    """SIGINT or SIGTERM asked the run to stop. A BaseException, like KeyboardInterrupt, so no
    ``except Exception`` on the way (the trainer's step retry, best-effort clean-ups) takes it for
    a failure; ``finally`` blocks still run. ``Trainer.fit`` sets ``step`` (the step running,
    1-based) and ``total`` when it arrives during the training loop."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.step: int | None = None
        self.total: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


_stopping = False


def _on_signal(signum, frame) -> None:
    global _stopping
    if _stopping:  # a second Ctrl-C while the clean-up runs: leave at once
        name = signal.Signals(signum).name
        print(f"\nsecond {name}: exiting without finishing the clean-up", file=sys.stderr,
              flush=True)
        os._exit(128 + signum)
    _stopping = True
    raise Interrupted(signum)


def stop_on_signals() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread (the first one; a second one
    exits at once). Main thread only (a no-op elsewhere)."""
    global _stopping
    if threading.current_thread() is threading.main_thread():
        _stopping = False
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)


@contextmanager
def keep_handlers():
    """Put the SIGINT and SIGTERM handlers back as they were before the block. ``ray.init``
    installs its own (the local node's SIGTERM handler kills every Ray process at once, the core
    worker's prints a stack and aborts), which would replace the entry point's."""
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(s, handler)


def resume_command(run_dir: str | Path, overrides: list[str] | None = None) -> str:
    """The shell command that continues the run in `run_dir`: this interpreter, ``-m launch.run``,
    the run's own command-line overrides (`overrides`; by default Hydra's, when called under
    ``launch.run``), with any ``trainer.resume=`` or ``hydra.run.dir=`` among them replaced by
    ``trainer.resume=auto hydra.run.dir=<run_dir, absolute>``. Run it from the same directory
    (the repository root)."""
    if overrides is None:
        overrides = _hydra_overrides()
    drop = ("trainer.resume=", "hydra.run.dir=")
    keep = [o for o in overrides if not o.lstrip("+~").startswith(drop)]
    return shlex.join([_python(), "-m", "launch.run", *keep, "trainer.resume=auto",
                       f"hydra.run.dir={os.path.abspath(run_dir)}"])


def stop_line(stop: Interrupted, run_dir: str | Path, overrides: list[str] | None = None) -> str:
    """The one line printed when a run stops on a signal: where it was, the last checkpoint
    written and the command that resumes it (``trainer.resume=auto`` starts afresh in the same
    folder when there is no checkpoint yet)."""
    from launch.checkpoint import complete_checkpoints

    found = complete_checkpoints(Path(run_dir))
    if stop.step is not None:
        where = f"during step {stop.step}/{stop.total}"
    elif found:
        where = "outside the training loop"
    else:
        where = "before the first step"
    if found:
        ckpt = f"last checkpoint {found[-1]} (step {int(found[-1].name.split('_')[-1])})"
        again = "resume with"
    else:
        ckpt = "no checkpoint written yet (trainer.save_every sets how often)"
        again = "start again with"
    return f"stopped by {stop.name} {where}; {ckpt}; {again}: {resume_command(run_dir, overrides)}"


def _hydra_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - outside Hydra: no overrides known
        pass
    return []


def _python() -> str:
    """This interpreter, relative to the working directory when inside it (``.venv/bin/python``);
    the absolute path otherwise."""
    exe = sys.executable or "python"
    rel = os.path.relpath(exe)
    return exe if rel.startswith("..") else rel
