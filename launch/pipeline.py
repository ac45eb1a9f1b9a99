"""What ``launch.run`` does with a validated config: resolve the model and the data
(``launch.inputs``), resume, train, evaluate, write the report.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from launch.config import ConfigError, RunConfig
from launch.inputs import load_data, load_validation, resolve_model_path

log = logging.getLogger(__name__)


def check_learner_device(run: RunConfig) -> None:
    """learner.logprob_impl=triton compiles its kernels for CUDA: refuse it on a CPU run."""
    from launch.cluster import known_cpu_only

    if run.learner.logprob_impl == "triton" and known_cpu_only(run):
        raise ConfigError(f"learner.logprob_impl (triton) runs its kernels on CUDA, but this run's "
                          f"learners are on CPUs (cluster.device={run.cluster.device}, no CUDA "
                          f"here); set learner.logprob_impl=auto (triton on CUDA, torch on CPU)")


def resume_point(run: RunConfig, run_dir: str) -> tuple[Path | None, str | None]:
    """(checkpoint to resume or None, its wandb run id). Checks the checkpoint fits this config
    and drops the metrics the interrupted run logged after it, before any actor starts."""
    from launch.checkpoint import (
        check_compatible,
        find_checkpoint,
        load_driver_state,
        set_aside_newer,
        truncate_metrics,
    )

    ckpt = find_checkpoint(Path(run_dir), run.trainer.resume)
    if ckpt is None:
        if run.trainer.resume == "auto":
            log.info("trainer.resume=auto: no complete checkpoint in %s; starting fresh", run_dir)
        return None, None
    driver = load_driver_state(ckpt)
    check_compatible(driver["config"], run, ckpt)
    set_aside_newer(Path(run_dir), ckpt)  # a later trajectory's checkpoints: kept, not counted
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
    except Exception as e:  # noqa: BLE001 - the report must not cost the run its result
        log.warning("the run report could not be written: %s: %s", type(e).__name__, e)


def run_pipeline(run: RunConfig, run_dir: str) -> dict:
    """Resolve model and data, train on Ray actors, evaluate; returns the final metrics."""
    from dataclasses import asdict

    from launch.logger import MetricsLogger
    from launch.metrics import format_table
    from launch.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.time()
    check_learner_device(run)
    model_path = resolve_model_path(run)
    train, heldout = load_data(run)
    validation = load_validation(run, heldout, train) if run.eval.temperatures else []
    print(f"model {model_path}; {len(train)} train / {len(heldout)} held-out problems"
          + (f" / {len(validation)} validation" if validation else "")
          + f"; strategy {run.meta.name}; run folder {os.path.abspath(run_dir)}")
    trainer = Trainer(run, run_dir, model_path, train, heldout, validation)
    ckpt, wandb_id = resume_point(run, run_dir)
    logger = MetricsLogger(run_dir, asdict(run), run.wandb.mode, run.wandb.project,
                           run.wandb.entity,
                           run.wandb.name or f"{run.experiment}-{Path(run_dir).name}",
                           run_id=wandb_id)
    trainer.wandb_id = logger.run_id
    try:
        try:
            trainer.setup()
            if ckpt is not None:
                trainer.restore(ckpt)
            final = trainer.fit(logger)
            exported = trainer.export_model(Path(run_dir) / "final_model")
            print(f"final model (Hugging Face folder + temperature policy): "
                  f"{os.path.abspath(exported)}")
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
    before, after = final.get("eval_base_greedy/all/avg@1"), final.get("eval_greedy/all/avg@1")
    if after is not None:
        print(f"greedy accuracy (argmax, one response per problem): "
              f"{'-' if before is None else f'{before:.3f}'} before, {after:.3f} after training")
    print(f"done in {summary['seconds']:.0f}s; run folder: {os.path.abspath(run_dir)}")
    return summary
