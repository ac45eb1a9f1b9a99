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


def run_pipeline(run: RunConfig, run_dir: str) -> dict:
    """Resolve model and data, then evaluate the model on the held-out split.

    The distributed GRPO training loop (rollout / reward / learner / meta actors) plugs in here
    as it lands; today this runs the baseline evaluation that the training loop reports against.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data.prompts import render_prompt
    from launch.evaluate import evaluate, format_table, hf_sampler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    t0 = time.time()
    model_path = resolve_model_path(run)
    train, heldout = load_data(run)
    log.info("model %s; %d train / %d held-out problems", model_path, len(train), len(heldout))
    torch.manual_seed(run.seed)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, run.model.dtype))
    model.eval()
    prompts = [render_prompt(p, tok, run.data.prompt_template, run.data.instruction) for p in heldout]
    temperature = run.eval.temperature if run.eval.temperature is not None else 1.0
    if run.eval.temperature_mode == "greedy":
        temperature = 0.0
    sampler = hf_sampler(model, tok, temperature, run.rollout.max_new_tokens, run.rollout.batch_size)
    metrics = evaluate(heldout, prompts, sampler, run.eval.samples) if heldout else {}
    result = {"model": str(model_path), "eval_temperature": temperature,
              "seconds": round(time.time() - t0, 1), **metrics}
    Path(run_dir, "baseline_eval.json").write_text(json.dumps(result, indent=2))
    if metrics:
        print(f"held-out evaluation of {model_path.name} at T={temperature} "
              f"({len(heldout)} problems x {run.eval.samples} samples):")
        print(format_table(metrics, run.eval.samples))
    print(f"run folder: {os.path.abspath(run_dir)}")
    return result
