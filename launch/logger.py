"""Metrics: one place that formats and writes them (JSONL, wandb, a console line per step)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

# the metrics shown on the console line, in order, with their short labels
CONSOLE = (("critic/score/mean", "score"), ("response_length/mean", "len"), ("tau/mean", "tau"),
           ("tau/gate_rate", "gate"), ("actor/pg_loss", "pg"), ("phi/pg_loss", "phi_pg"),
           ("tampo/expected_temperature", "E[T]"), ("eval/all/avg@", "eval"),
           ("timing_s/step", "s"))


class MetricsLogger:
    def __init__(self, run_dir: str, config: dict, mode: str = "offline", project: str = "tempo-rl",
                 entity: str | None = None, name: str | None = None, run_id: str | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.wandb = None
        if mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb = wandb.init(project=project, entity=entity, name=name, config=config,
                                    mode=mode, dir=run_dir, id=run_id, resume="allow")
        self.run_id = self.wandb.id if self.wandb else None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.wandb is not None:
            self.wandb.log(clean, step=step)

    def log_images(self, paths: list[Path]) -> None:
        """PNG files as wandb images under plots/<name> (nothing without wandb)."""
        if self.wandb is not None and paths:
            import wandb

            self.wandb.log({f"plots/{Path(p).stem}": wandb.Image(str(p)) for p in paths})

    def console_line(self, step: int, total: int, metrics: dict[str, float],
                     elapsed_s: float | None = None, steps_timed: int = 0) -> str:
        """The step's console line: ``step k/N``, the phase, the CONSOLE metrics, then the time
        since the loop started and the ETA (the mean of the `steps_timed` steps this process ran
        in `elapsed_s` seconds, evaluations and checkpoints included, times the steps left), e.g.
        ``step 57/120 | theta | score 0.41 | ... | s 2.3 | 2m14s elapsed, ETA 2m28s``."""
        parts = [f"step {step + 1}/{total}"]
        if "phase" in metrics:
            parts.append(str(metrics["phase"]))
        for key, label in CONSOLE:
            value = next((v for k, v in metrics.items() if k.startswith(key)), None)
            if isinstance(value, (int, float)) and math.isfinite(value):
                parts.append(f"{label} {value:.3f}" if abs(value) < 100 else f"{label} {value:.0f}")
        if elapsed_s is not None and steps_timed > 0:
            left = elapsed_s / steps_timed * (total - step - 1)
            parts.append(f"{duration(elapsed_s)} elapsed, ETA {duration(left)}")
        return " | ".join(parts)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def duration(seconds: float) -> str:
    """A short duration: 42s, 3m07s, 1h05m."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
