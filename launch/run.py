"""The driver: ``python -m launch.run +experiment=NAME [overrides]``.

Hydra composes ``conf/``; ``launch.config.validate`` checks everything before any process or
actor starts; then the run folder (Hydra's output dir) gets the resolved config, the model is
resolved (the embedded tiny model is built on first use and cached), the data is loaded, and
the pipeline runs (``launch.pipeline``; the model and data: ``launch.inputs``).

Ctrl-C (SIGINT) or SIGTERM stops the run through its clean-up and ends with one line, e.g.::

    stopped by SIGINT during step 57/120; last checkpoint runs/x/checkpoints/step_000040
    (step 40); resume with: .venv/bin/python -m launch.run +experiment=introllm
    trainer.resume=auto hydra.run.dir=/abs/runs/x

(one line on the console; ``launch.signals.stop_line``), and exit status 130 or 143.
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from launch.config import ConfigError, validate
from launch.signals import Interrupted, stop_line, stop_on_signals

log = logging.getLogger("launch.run")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # Ctrl-C and a plain `kill` must still run the clean-up (finally: ray.shutdown) rather than
    # orphan the local Ray cluster and its actors, and end with one line saying how to resume
    # (put back after ray.init, which replaces the handlers)
    stop_on_signals()
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        _run(cfg, run_dir)
    except Interrupted as stop:
        print(stop_line(stop, run_dir), file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)


def _run(cfg: DictConfig, run_dir: str) -> None:
    try:
        run = validate(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    OmegaConf.save(cfg, os.path.join(run_dir, "resolved_config.yaml"), resolve=True)
    from launch.cluster import known_cpu_only
    from launch.pipeline import run_pipeline
    from launch.quiet import quiet_known_noise
    from launch.trainer import TrainingStopped

    # before anything imports DeepSpeed (resuming reads a checkpoint): its accelerator detection
    quiet_known_noise(known_cpu_only(run))

    try:
        run_pipeline(run, run_dir)
    except ConfigError as e:  # problems found while resolving the model or the data
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as e:
        print(f"run stopped: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
