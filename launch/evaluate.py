"""Held-out evaluation of a checkpoint or model folder: the entry point.

    python -m launch.evaluate +experiment=introllm eval.checkpoint=runs/x/checkpoints/step_000120
    python -m launch.evaluate model.path=/models/Qwen3-1.7B data=math \\
        data.eval_path=/data/math500.jsonl
    python -m launch.evaluate +experiment=fixed eval.temperature_mode=greedy eval.samples=1
    python -m launch.evaluate +experiment=introllm model.path=runs/x/final_model   # exported
    python -m launch.evaluate +experiment=introllm eval.checkpoint=runs/x \
        'eval.temperatures=[0.6,0.8,1.0]' data.val_size=250     # matched and own decodings

The same configuration as ``launch.run`` (so the strategy, its head and the data are the run's);
no learner is started. The evaluation runs on the rollout actors (``Trainer.evaluate``): k samples
per problem decoded with the strategy's temperatures (IntroLLM's head: ``eval.temperature_mode=
sample|mean``; scalar strategies at ``eval.temperature``) or greedily, scored by the reward actor,
summarised by ``launch.metrics.summarize`` into Avg@k, unbiased Pass@k and maj@k overall, per
family and per level. With ``eval.temperatures`` it decodes instead the held-out and validation
problems at each temperature (every token at it, whatever the strategy) and under the strategy's
own policy (``Trainer.sweep``, what ``launch.compare`` pairs and tunes on). Results: the printed
table and ``<run folder>/eval_results.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def evaluate_run(run, run_dir: str) -> dict[str, float]:
    """Evaluate `run`'s model (or `run.eval.checkpoint`) on its held-out data; writes
    eval_results.json in `run_dir` and returns the metrics."""
    import ray

    from launch.checkpoint import checkpoint_weights, find_checkpoint, model_dir
    from launch.config import ConfigError
    from launch.inputs import load_data, load_validation, resolve_model_path
    from launch.metrics import format_table
    from launch.model_export import read_policy
    from launch.trainer import Trainer

    train, heldout = load_data(run)
    if not heldout:
        raise ConfigError("the configured data has no held-out problems (data.eval_size=0 or no "
                          "data.eval_path); set data.eval_size or data.eval_path")
    if run.eval.checkpoint == "auto":
        raise ConfigError("eval.checkpoint (auto) must be a checkpoint or run folder path; "
                          "e.g. eval.checkpoint=runs/NAME/checkpoints/step_000120")
    ckpt = (find_checkpoint(Path(run_dir), run.eval.checkpoint, "eval.checkpoint")
            if run.eval.checkpoint else None)
    # a checkpoint is a model folder (config, tokenizer, weights): with the embedded model
    # (model.path=null) it is the one the run trained, even after the embedded default changed
    model_path = (model_dir(ckpt) if ckpt is not None and run.model.path is None
                  else resolve_model_path(run))
    sweep = bool(run.eval.temperatures)
    validation = load_validation(run, heldout, train) if sweep else []
    trainer = Trainer(run, run_dir, model_path, [], heldout, validation)
    try:
        trainer.setup(learners=False)
        # an exported folder is the model after its trained steps (the evaluation seeds follow)
        policy = read_policy(model_path)
        step = int(policy["trained_steps"]) if policy and ckpt is None else 0
        if ckpt is not None:
            weights, meta_state = checkpoint_weights(ckpt)
            ref = ray.put(weights)
            ray.get([a.load_weights.remote(ref) for a in trainer.rollout])
            if meta_state is not None:
                ray.get(trainer.meta.load_state_dict.remote(meta_state))
            step = int(ckpt.name.split("_")[-1])
        results = trainer.sweep(step) if sweep else trainer.evaluate(step)
    finally:
        trainer.shutdown()
    k = run.eval.samples
    out = {"model": str(model_path), "checkpoint": str(ckpt) if ckpt else None,
           "problems": len(heldout), "samples": k, "mode": run.eval.temperature_mode,
           "temperature": run.eval.temperature, **results}
    Path(run_dir, "eval_results.json").write_text(json.dumps(out, indent=2))
    if sweep:
        print(f"evaluation of {ckpt or model_path}, {k} samples per problem ({len(heldout)} "
              f"held-out, {len(validation)} validation problems), overall:")
        tail = f"/all/avg@{k}"
        for key in sorted(key for key in results if key.endswith(tail)):
            at = key[len("sweep/"):-len(tail)]
            print(f"  {at:<12} Avg@{k} {results[key]:.3f}   "
                  f"Pass@{k} {results[key.replace('avg@', 'pass@')]:.3f}")
    else:
        print(f"held-out evaluation of {ckpt or model_path} ({len(heldout)} problems x {k} "
              f"samples, {run.eval.temperature_mode}):")
        print(format_table({key[len("eval/"):]: v for key, v in results.items()}, k))
    print(f"results: {os.path.abspath(Path(run_dir, 'eval_results.json'))}")
    return out


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from launch.config import ConfigError, validate
    from launch.signals import exit_on_sigterm

    @hydra.main(version_base="1.3", config_path="../conf", config_name="config")
    def _main(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        exit_on_sigterm()
        try:
            evaluate_run(validate(cfg), HydraConfig.get().runtime.output_dir)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            sys.exit(2)

    _main()


if __name__ == "__main__":
    main()
