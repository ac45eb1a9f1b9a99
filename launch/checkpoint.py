"""Run checkpoints on disk: where they are, which one to resume, and whether it fits this config.

A checkpoint is a folder ``<run>/checkpoints/step_NNNNNN`` (NNNNNN = steps completed) holding
``learner_rank{r}/learner_rank{r}.pt`` (theta, phi, both optimizers, the schedules' positions and
each rank's RNG states), ``driver.pt`` (the meta actor's state, the prompt sampler's position,
the step, the driver's RNG, the wandb run id and the config it was written under) and a
``COMPLETE`` marker. ``Trainer.save`` writes it under a temporary name and renames it, so a
folder named ``step_*`` with ``COMPLETE`` is whole; anything else is ignored (and a crash
mid-write leaves only a ``.tmp_*`` folder behind).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from launch.config import ConfigError, RunConfig

# Settings a resumed run must share with the run that wrote the checkpoint: they define the model,
# the data stream and the optimisation. Everything else (total_steps, eval, logging, cluster
# size of the rollout pool, ...) may change between the two.
MUST_MATCH = ("seed", "model", "data", "learner", "meta", "reward", "rollout.group_size",
              "rollout.max_new_tokens", "rollout.max_prompt_tokens", "trainer.prompts_per_step")


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The whole checkpoints of a run folder, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("step_") and (p / "COMPLETE").exists())


def find_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from (None = start fresh); ConfigError if `resume` names
    something that is not a complete checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if (path / "COMPLETE").exists() and (path / "driver.pt").exists():
        return path
    found = complete_checkpoints(path)
    if found:
        return found[-1]
    raise ConfigError(f"trainer.resume ({resume}) is neither a complete checkpoint folder "
                      "(step_NNNNNN with COMPLETE and driver.pt) nor a run folder with one; "
                      "point it at one, use trainer.resume=auto, or null to start fresh")


def load_driver_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / "driver.pt", map_location="cpu", weights_only=False)


def checkpoint_weights(ckpt: Path) -> tuple[dict, dict | None]:
    """(theta and phi weights as the engines load them, the meta actor's state) of a checkpoint."""
    sd = torch.load(Path(ckpt) / "learner_rank0" / "learner_rank0.pt", map_location="cpu",
                    weights_only=False)
    weights = dict(sd["theta"]["module"])
    if "phi" in sd:
        weights.update(sd["phi"]["module"])  # keys temperature_head.*
    return weights, load_driver_state(ckpt).get("meta")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_compatible(saved_config: dict, run: RunConfig, ckpt: Path) -> None:
    """ConfigError naming the first differing settings when this run cannot continue `ckpt`."""
    now, then = _flat(asdict(run)), _flat(saved_config)
    keys = sorted((k for k in set(now) | set(then)
                   if any(k == m or k.startswith(m + ".") for m in MUST_MATCH)),
                  key=lambda k: (not k.endswith(".name"), k))  # a strategy change first
    diff = [k for k in keys if now.get(k) != then.get(k)]
    if diff:
        shown = "; ".join(f"{k}: checkpoint {then.get(k)!r}, now {now.get(k)!r}" for k in diff[:4])
        raise ConfigError(f"trainer.resume ({ckpt}) was written by a run with other settings "
                          f"({shown}{'; ...' if len(diff) > 4 else ''}); resume with the settings "
                          "it was written with, or start a new run folder (trainer.resume=null)")


def truncate_metrics(path: Path, last_step: int) -> int:
    """Drop the lines of a metrics JSONL logged after `last_step` (steps the crashed run did past
    its checkpoint, which the resumed run repeats); atomic. Returns the number dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:  # a line cut short by the crash
            dropped += 1
            continue
        if step <= last_step:
            keep.append(line)
        else:
            dropped += 1
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)
    return dropped


def logged_base_eval(path: Path) -> dict[str, float]:
    """The base-model evaluation (eval_base/*) a run logged at step 0, for a resumed run's
    summary."""
    out: dict[str, float] = {}
    if Path(path).exists():
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            if row.get("step") == 0:
                out.update({k: v for k, v in row.items() if k.startswith("eval_base/")})
    return out
