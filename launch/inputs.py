"""A run's inputs, resolved before anything starts: the model folder and the problems.

Model resolution: ``model.path=null`` means the embedded tiny model (built on first use and
cached); a local folder must be a Hugging Face model folder. Either way every model-dependent
setting is then checked against the folder's config.json and tokenizer
(``launch.model_checks``), before anything starts.
Used by ``launch.pipeline`` (training), ``launch.evaluate``, ``launch.analyze`` (the entropy
scatter) and the benchmarks.
"""

from __future__ import annotations

from pathlib import Path

from launch.config import ConfigError, RunConfig


def resolve_model_path(run: RunConfig, check: bool = True) -> Path:
    """The model folder to load; builds the embedded model if needed; checks a local folder and
    (``check``) every model-dependent setting of ``run`` against it (``launch.model_checks``)."""
    path = _model_folder(run)
    if check:
        from launch.model_checks import check_model

        check_model(run, path)
    return path


def _model_folder(run: RunConfig) -> Path:
    """The embedded model's folder (built on first use), or ``model.path`` once it is checked to
    be a model folder."""
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


def load_validation(run: RunConfig, heldout=(), train=()) -> list:
    """The validation problems (data.val_size of the synthetic 'val' split, or data.val_path),
    checked to share no prompt with the held-out ``heldout`` (what is tuned on them must never
    see a test problem) or with ``train`` (nor one trained on)."""
    from data.loaders import DataError, load_problems
    from data.synthetic import generate

    d = run.data
    if d.source == "synthetic":
        val = generate(d.val_size, "val", seed=run.seed, families=d.families,
                       levels=d.levels) if d.val_size else []
    else:
        try:
            val = load_problems(d.val_path, d.format, d.max_bad_fraction) if d.val_path else []
        except DataError as e:
            raise ConfigError(str(e)) from None
    prompts = {p.prompt for p in val}
    for name, other in (("held-out", heldout), ("training", train)):
        shared = prompts & {p.prompt for p in other}
        if shared:
            raise ConfigError(
                f"data.val_path ({d.val_path}) shares {len(shared)} problems with the {name} "
                f"set (e.g. {sorted(shared)[0]!r}); validation must be disjoint from the test "
                "and training problems: remove them from one of the files")
    return val
