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

    def console_line(self, step: int, total: int, metrics: dict[str, float]) -> str:
        parts = [f"step {step + 1}/{total}"]
        if "phase" in metrics:
            parts.append(str(metrics["phase"]))
        for key, label in CONSOLE:
            value = next((v for k, v in metrics.items() if k.startswith(key)), None)
            if isinstance(value, (int, float)) and math.isfinite(value):
                parts.append(f"{label} {value:.3f}" if abs(value) < 100 else f"{label} {value:.0f}")
        return " | ".join(parts)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
