"""A trained model as a Hugging Face folder, with its temperature policy beside it.

``write_model_folder`` (the learners write the weights, or a checkpoint's are copied) gives::

    config.json, generation_config.json, model*.safetensors, tokenizer files
                                    theta, as transformers writes it: AutoModelForCausalLM
                                    .from_pretrained(DIR) loads it (and ignores the files below)
    temperature_head.safetensors    head-owning strategies (IntroLLM): the head's weights,
                                    ``temperature_head.*`` (read by the vLLM engine as part of
                                    the model)
    temperature_policy.json         the temperature policy (POLICY_SCHEMA below)

``temperature_policy.json`` (schema 1)::

    {"schema": 1,
     "strategy": {"name": "introllm", "kwargs": {...}},  # rebuilds it: meta.strategy_from_spec
     "learns_head": true,                                 # the head file holds its weights
     "head_file": "temperature_head.safetensors",         # or null
     "summary": {...},      # what it samples at: IntroLLM {tau_min, tau_max, tau_init, eps,
                            # temperature_mode}; TAMPO {candidates, pi, temperature (expected)};
                            # a schedule {temperature (its value at trained_steps)}; a per-token
                            # rule {} (its kwargs say it)
     "state": {...},        # a head-less strategy's learned state (TAMPO: candidates, ema, pi,
                            # num_updates) as lists and numbers
     "trained_steps": 120, "checkpoint": "runs/.../checkpoints/step_000120"}

``apply_policy`` is the other direction: a run (training or ``launch.evaluate``) whose
``model.path`` is such a folder starts its strategy from the exported state.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from rollout.vllm_overlay import HEAD_FILE, HEAD_PREFIX

log = logging.getLogger(__name__)

POLICY_FILE = "temperature_policy.json"
POLICY_SCHEMA = 1


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def policy_record(strategy, steps: int, checkpoint: str | None) -> dict:
    """The policy file's content for `strategy` after `steps` training steps."""
    learns = strategy.learns_head
    return {"schema": POLICY_SCHEMA, "strategy": strategy.spec(), "learns_head": learns,
            "head_file": HEAD_FILE if learns else None,
            "summary": strategy.temperature_summary(steps),
            "state": {} if learns else _plain(strategy.state_dict()),
            "trained_steps": steps, "checkpoint": checkpoint}


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.index.json", POLICY_FILE)
"""what a model folder holds beside its config and tokenizer files"""


def copy_model_files(base_model: Path, out: Path, dtype: str | None = None) -> None:
    """``base_model``'s config, generation config and tokenizer files into ``out`` (every file
    but weights and policy), so that ``out``'s weights load as a Hugging Face folder; ``dtype``:
    the weights' dtype, written into config.json (the base's may differ)."""
    base, out = Path(base_model), Path(out)
    skip = {p for pattern in WEIGHT_FILES for p in base.glob(pattern)}
    for f in base.iterdir():
        if f.is_file() and f not in skip:
            shutil.copyfile(f, out / f.name)
    if dtype is not None:
        config = json.loads((out / "config.json").read_text())
        config.pop("torch_dtype", None)
        config["dtype"] = dtype
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def weights_dtype(folder: Path) -> str:
    """The dtype of a floating tensor of the folder's theta (its first safetensors shard)."""
    from safetensors import safe_open

    for f in sorted(Path(folder).glob("model*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                t = sf.get_slice(k)
                name = t.get_dtype()
                if name.startswith(("F", "BF")):
                    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16",
                            "F64": "float64"}[name]
    raise ValueError(f"{folder} holds no floating-point theta tensor")


def write_model_folder(out: Path, base_model: Path, write_weights, strategy, steps: int,
                       checkpoint: str | None = None) -> Path:
    """An exported model folder: ``write_weights(folder)`` puts theta (Hugging Face
    safetensors, sharded with an index) and, for a head strategy, its head
    (``temperature_head.safetensors``) into it; then `base_model`'s config and tokenizer, and the
    policy file. Written into a temporary sibling folder first, renamed when whole. `strategy`
    holds the learned state (a head strategy's head is read from the folder)."""
    from safetensors.torch import load_file

    out = Path(out)
    check_out(out, [Path(base_model)] + ([Path(checkpoint)] if checkpoint else []))
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_weights(tmp)
    check_fits(tmp, base_model)
    copy_model_files(base_model, tmp, weights_dtype(tmp))
    if strategy.learns_head:
        if not (tmp / HEAD_FILE).is_file():
            raise ValueError(f"strategy {strategy.name} learns a head but the weights have no "
                             f"{HEAD_PREFIX}* tensors")
        strategy.load_state_dict({k[len(HEAD_PREFIX):]: v
                                  for k, v in load_file(str(tmp / HEAD_FILE)).items()})
    record = policy_record(strategy, steps, checkpoint)
    (tmp / POLICY_FILE).write_text(json.dumps(record, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def check_fits(folder: Path, base_model: Path) -> None:
    """The folder's theta names are the base model's (a tied LM head may be left out)."""
    from rollout.vllm_overlay import checkpoint_keys

    have = {k for k in checkpoint_keys(folder) if not k.startswith(HEAD_PREFIX)}
    want = {k for k in checkpoint_keys(base_model) if not k.startswith(HEAD_PREFIX)}
    missing = sorted(want - have - {"lm_head.weight"})
    unexpected = sorted(have - want - {"lm_head.weight"})
    if missing or unexpected:
        raise ValueError(f"the weights do not fit {base_model}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}; export with the base model the run "
                         f"trained (--base)")


def check_out(out: Path, keep: list[Path]) -> None:
    """Refuse an output folder whose replacement would delete something else: one that exists
    and is not an exported folder, or that is (or holds) a folder the export reads."""
    out = out.resolve()
    for k in keep:
        k = k.resolve()
        if out == k or out in k.parents:
            raise ValueError(f"--out ({out}) is or holds {k}, which the export reads; write the "
                             f"model to another folder")
    if out.exists() and not (out / POLICY_FILE).is_file():
        raise ValueError(f"--out ({out}) exists and is not an exported model folder (no "
                         f"{POLICY_FILE}); it is replaced by the export, so give a new folder")


def read_policy(model_path: Path) -> dict | None:
    """The folder's policy file (None: a plain model folder)."""
    path = Path(model_path) / POLICY_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("schema") != POLICY_SCHEMA:
        raise ValueError(f"{path} has schema {record.get('schema')!r}; this version reads "
                         f"{POLICY_SCHEMA}: export the checkpoint again with this version")
    return record


def apply_policy(model_path: Path, strategy) -> dict | None:
    """Start `strategy` from the exported state of `model_path`, when the folder has one and it
    was exported with the same strategy; returns the policy record (None: nothing applied)."""
    record = read_policy(model_path)
    if record is None:
        return None
    name = record["strategy"]["name"]
    if name != strategy.name:
        log.warning("%s was exported with the %s temperature strategy; this run uses %s, so the "
                    "exported policy is not used (set meta=%s to use it)", model_path, name,
                    strategy.name, name)
        return None
    now = strategy.spec()["kwargs"]
    differ = {k: (v, now.get(k)) for k, v in record["strategy"]["kwargs"].items()
              if k != "temperature_mode" and now.get(k) != v}
    if differ:
        log.warning("%s was exported with other %s settings (exported, now: %s); its policy is "
                    "used with this run's", model_path, name, differ)
    if strategy.learns_head:
        from safetensors.torch import load_file

        tensors = load_file(str(Path(model_path) / record["head_file"]))
        strategy.load_state_dict({k[len(HEAD_PREFIX):]: v for k, v in tensors.items()})
    elif record["state"]:
        strategy.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                                  if isinstance(v, list) else v
                                  for k, v in record["state"].items()})
    log.info("%s: the %s temperature policy exported after %s steps", model_path, name,
             record["trained_steps"])
    return record


def export_checkpoint(ckpt: Path, out: Path, base_model: Path | None = None) -> Path:
    """`write_model_folder` from a checkpoint folder (``launch.checkpoint``): its weights, the
    strategy it was written with and its meta actor's state; the base model (config, tokenizer)
    is the run's unless `base_model` is passed."""
    from launch.checkpoint import load_driver_state, model_dir
    from meta.registry import strategy_from_spec

    driver = load_driver_state(ckpt)
    base = Path(base_model) if base_model else Path(driver["model_path"])
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"the base model folder {base} (the run's model.path) is not "
                                f"here; pass the folder the run trained from with --base")
    strategy = strategy_from_spec(driver["strategy"])
    if driver.get("meta") is not None:
        strategy.load_state_dict(driver["meta"]["strategy"])
    weights = model_dir(ckpt)
    names = [f for f in weights.iterdir() if f.is_file() and any(f.match(w) for w in WEIGHT_FILES)]

    def copy_weights(folder: Path) -> None:
        for f in names:
            shutil.copyfile(f, folder / f.name)

    return write_model_folder(out, base, copy_weights, strategy, int(driver["step"]), str(ckpt))
