"""What ``launch.run`` does with a validated config: resolve the model and the data, then run.

Model resolution: ``model.path=null`` means the embedded tiny model (built on first use and
cached); a local folder must be a Hugging Face model folder, checked before anything starts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from launch.config import ConfigError, RunConfig

log = logging.getLogger(__name__)


def resolve_model_path(run: RunConfig) -> Path:
    """The model folder to load; builds the embedded model if needed; checks a local folder."""
    if run.model.path is None:
        from launch.build_model import ensure_tiny_model

        return ensure_tiny_model(cache_dir=run.model.cache_dir)
    path = Path(run.model.path).expanduser()
    if not path.is_dir():
        raise ConfigError(f"model.path ({run.model.path}) is not a folder; pass a local Hugging "
                          "Face model folder (there is no hub access), or model.path=null for "
                          "the embedded tiny model")
    if not (path / "config.json").exists():
        raise ConfigError(f"model.path ({path}) is not a model folder: it has no config.json; "
                          "point it at the folder that holds config.json and *.safetensors")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ConfigError(f"model.path ({path}) has no weights (*.safetensors or *.bin); "
                          "point it at a complete model folder")
    return path


def check_learner_device(run: RunConfig) -> None:
    """learner.logprob_impl=triton compiles its kernels for CUDA: refuse it on a CPU run."""
    from launch.trainer import known_cpu_only

    if run.learner.logprob_impl == "triton" and known_cpu_only(run):
        raise ConfigError(f"learner.logprob_impl (triton) runs its kernels on CUDA, but this run's "
                          f"learners are on CPUs (cluster.device={run.cluster.device}, no CUDA "
                          f"here); set learner.logprob_impl=auto (triton on CUDA, torch on CPU)")


def load_data(run: RunConfig):
    """(train problems, held-out problems) as configured."""
    from data.loaders import DataError, load_problems
    from data.synthetic import generate

    d = run.data
    if d.source == "synthetic":
        train = generate(d.train_size, "train", seed=run.seed, families=d.families, levels=d.levels)
        heldout = generate(d.eval_size, "eval", seed=run.seed, families=d.families,
                           levels=d.levels) if d.eval_size else []
        return train, heldout
    try:
        train = load_problems(d.train_path, d.format, d.max_bad_fraction)
        heldout = load_problems(d.eval_path, d.format, d.max_bad_fraction) if d.eval_path else []
    except DataError as e:
        raise ConfigError(str(e)) from None
    return train, heldout


def resume_point(run: RunConfig, run_dir: str) -> tuple[Path | None, str | None]:
    """(checkpoint to resume or None, its wandb run id). Checks the checkpoint fits this config
    and drops the metrics the interrupted run logged after it, before any actor starts."""
    from launch.checkpoint import (check_compatible, find_checkpoint, load_driver_state,
                                   truncate_metrics)

    ckpt = find_checkpoint(Path(run_dir), run.trainer.resume)
    if ckpt is None:
        if run.trainer.resume == "auto":
            log.info("trainer.resume=auto: no complete checkpoint in %s; starting fresh", run_dir)
        return None, None
    driver = load_driver_state(ckpt)
    check_compatible(driver["config"], run, ckpt)
    dropped = truncate_metrics(Path(run_dir) / "metrics.jsonl", int(driver["step"]))
    if dropped:
        log.info("resume: dropped %d metric lines logged after step %d", dropped, driver["step"])
    return ckpt, driver.get("wandb_id")


def write_report_logged(run_dir: str, logger) -> None:
    """The analyses (plots + report.md, ``launch.analyze``), the plots also logged to wandb; a
    failure here is a warning: it must not cost the run its result."""
    try:
        from launch.analyze import write_report

        report = write_report(Path(run_dir))
        logger.log_images(sorted(Path(run_dir, "plots").glob("*.png")))
        print(f"report: {os.path.abspath(report)}")
    except Exception as e:  # noqa: BLE001
        log.warning("the run report could not be written: %s: %s", type(e).__name__, e)


def run_pipeline(run: RunConfig, run_dir: str) -> dict:
    """Resolve model and data, train on Ray actors, evaluate; returns the final metrics."""
    from dataclasses import asdict

    from launch.evaluate import format_table
    from launch.logger import MetricsLogger
    from launch.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.time()
    check_learner_device(run)
    model_path = resolve_model_path(run)
    train, heldout = load_data(run)
    print(f"model {model_path}; {len(train)} train / {len(heldout)} held-out problems; "
          f"strategy {run.meta.name}; run folder {os.path.abspath(run_dir)}")
    trainer = Trainer(run, run_dir, model_path, train, heldout)
    ckpt, wandb_id = resume_point(run, run_dir)
    logger = MetricsLogger(run_dir, asdict(run), run.wandb.mode, run.wandb.project,
                           run.wandb.entity, run.wandb.name or f"{run.experiment}-{Path(run_dir).name}",
                           run_id=wandb_id)
    trainer.wandb_id = logger.run_id
    try:
        try:
            trainer.setup()
            if ckpt is not None:
                trainer.restore(ckpt)
            final = trainer.fit(logger)
        finally:
            trainer.shutdown()
        summary = {"model": str(model_path), "seconds": round(time.time() - t0, 1), **final}
        Path(run_dir, "final_metrics.json").write_text(json.dumps(summary, indent=2, default=str))
        write_report_logged(run_dir, logger)
    finally:
        logger.finish()
    k = run.eval.samples
    for prefix, label in (("eval_base/", "before training"), ("eval/", "after training")):
        part = {key[len(prefix):]: v for key, v in final.items() if key.startswith(prefix)}
        if part:
            print(f"held-out evaluation {label} ({len(heldout)} problems x {k} samples):")
            print(format_table(part, k))
    print(f"done in {summary['seconds']:.0f}s; run folder: {os.path.abspath(run_dir)}")
    return summary
