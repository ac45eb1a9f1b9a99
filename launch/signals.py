"""Signal handling shared by the entry points (``launch.run``, ``launch.evaluate``) and the
trainer, which sets it again after ``ray.init``."""

from __future__ import annotations

import signal
import sys
import threading


def exit_on_sigterm() -> None:
    """SIGTERM (a plain `kill`, a scheduler's pre-emption) exits through ``finally`` blocks, so the
    run shuts its actors and wandb down cleanly. ``ray.init`` installs handlers of its own (the
    local node's kills every Ray process at once, the core worker's prints a stack and aborts),
    so this is called again after it. Main thread only (a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
