"""The driver: ``python -m launch.run +experiment=NAME [overrides]``.

Hydra composes ``conf/``; ``launch.config.validate`` checks everything before any process or
actor starts; then the run folder (Hydra's output dir) gets the resolved config, the model is
resolved (the embedded tiny model is built on first use and cached), the data is loaded, and
the pipeline runs (``launch.pipeline``; the model and data: ``launch.inputs``).
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from launch.config import ConfigError, validate
from launch.signals import exit_on_sigterm

log = logging.getLogger("launch.run")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    # a plain `kill` must still run the clean-up (finally: ray.shutdown) rather than orphan the
    # local Ray cluster and its actors (set again after ray.init, which replaces it)
    exit_on_sigterm()
    try:
        run = validate(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    OmegaConf.save(cfg, os.path.join(run_dir, "resolved_config.yaml"), resolve=True)
    from launch.pipeline import run_pipeline
    from launch.trainer import TrainingStopped

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
