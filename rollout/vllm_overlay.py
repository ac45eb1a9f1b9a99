"""The folder vLLM loads: the user's checkpoint, seen through an overlay that adds the head.

vLLM builds the model class named by ``config.json``'s ``architectures`` and refuses to start when
a parameter of that class has no weight in the checkpoint. The rollout engine's class
(``Tempo<Arch>``, ``rollout.vllm_model``) has the temperature head's parameters
(``temperature_head.fc1.weight`` ...), so the folder it loads must

* name the Tempo architecture in ``config.json``, and
* hold the head's weights (beside the LLM's: a checkpoint written by the learner has them).

The user's folder is never modified (it may be read-only or shared). Instead an overlay folder
gets a symlink to every file of the original, a rewritten ``config.json`` and, when the original has
no head weights, ``temperature_head.safetensors`` with an initial head (plus a rewritten
``model.safetensors.index.json`` for sharded checkpoints, whose index lists the files vLLM reads).

No vLLM import here: the learner can use ``save_head`` / ``head_keys`` to write checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

HEAD_PREFIX = "temperature_head."
HEAD_FILE = "temperature_head.safetensors"
HEAD_PARAMS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
INDEX_FILE = "model.safetensors.index.json"


def head_keys() -> list[str]:
    """Checkpoint names of the temperature head's weights."""
    return [HEAD_PREFIX + p for p in HEAD_PARAMS]


def read_config(model_path: str | os.PathLike) -> dict:
    path = Path(model_path) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; model.path must be a local Hugging Face "
                                f"model folder (config.json, weights, tokenizer)")
    return json.loads(path.read_text())


def checkpoint_keys(model_path: str | os.PathLike) -> set[str]:
    """Names of the weights in a folder: the safetensors index, else the safetensors headers."""
    from safetensors import safe_open

    folder = Path(model_path)
    index = folder / INDEX_FILE
    if index.is_file():  # an exported sharded folder keeps its head beside the indexed shards
        keys = set(json.loads(index.read_text())["weight_map"])
        if (folder / HEAD_FILE).is_file():
            with safe_open(str(folder / HEAD_FILE), framework="pt") as sf:
                keys.update(sf.keys())
        return keys
    keys = set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            keys.update(sf.keys())
    if not keys:
        for f in sorted(folder.glob("*.bin")):  # legacy PyTorch checkpoints
            keys.update(torch.load(f, map_location="meta", weights_only=True).keys())
    return keys


def has_head(keys: set[str]) -> bool:
    return all(k in keys for k in head_keys())


def save_head(folder: str | os.PathLike, head_state: dict[str, torch.Tensor],
              use_safetensors: bool = True) -> Path:
    """Write the head's state dict (TemperatureHead names: fc1.weight ...) into ``folder``."""
    tensors = {HEAD_PREFIX + k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in head_state.items()}
    if sorted(tensors) != sorted(head_keys()):
        raise ValueError(f"head state has keys {sorted(head_state)}; expected {list(HEAD_PARAMS)}")
    if use_safetensors:
        from safetensors.torch import save_file

        path = Path(folder) / HEAD_FILE
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    else:  # a folder of .bin weights: vLLM reads *.safetensors only when there are any
        path = Path(folder) / "temperature_head.bin"
        tmp = path.with_suffix(".tmp")
        torch.save(tensors, tmp)
    os.replace(tmp, path)
    return path


def default_overlay_root() -> Path:
    root = os.environ.get("TEMPO_CACHE") or os.path.join(Path.home(), ".cache", "tempo-rl")
    return Path(root) / "vllm_overlays"


def build_overlay(model_path: str | os.PathLike, architecture: str, keys: set[str],
                  initial_head, overlay_dir: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Create the overlay folder; returns (path, created_temporary).

    ``initial_head``: a callable returning the head state dict to write when neither the original
    folder nor an existing overlay in ``overlay_dir`` has head weights.
    ``overlay_dir`` None: a fresh temporary folder under ``$TEMPO_CACHE/vllm_overlays`` (the
    caller removes it on close); given: that folder, reused across runs (its head is kept).
    """
    src = Path(model_path).resolve()
    temporary = overlay_dir is None
    if temporary:
        root = default_overlay_root()
        root.mkdir(parents=True, exist_ok=True)
        dst = Path(tempfile.mkdtemp(prefix=f"{src.name}-", dir=root))
    else:
        dst = Path(overlay_dir).resolve()
        if dst == src:
            raise ValueError(f"head_dir ({dst}) must not be the model folder itself; the model "
                             f"folder is never modified, pass another folder or None")
        dst.mkdir(parents=True, exist_ok=True)
    sharded = (src / INDEX_FILE).is_file()
    safetensors = sharded or any(src.glob("*.safetensors"))
    head_in_src = has_head(keys)
    head_file = dst / (HEAD_FILE if safetensors else "temperature_head.bin")
    reuse = not head_in_src and head_file.is_file() and not head_file.is_symlink()
    # a sharded folder's index must list the head too: vLLM reads only the files it names
    own = {"config.json"} | ({INDEX_FILE} if sharded else set())
    if not head_in_src:
        own.add(head_file.name)
    for entry in src.iterdir():
        if entry.name in own:
            continue
        link = dst / entry.name
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        os.symlink(entry, link)
    config = read_config(src)
    config["architectures"] = [architecture]
    _write_json(dst / "config.json", config)
    if not head_in_src:
        if reuse:
            log.info("vLLM overlay %s: reusing the temperature head saved there earlier", dst)
        else:
            save_head(dst, initial_head(), use_safetensors=safetensors)
            log.info("model folder %s has no temperature-head weights: initialised a head and "
                     "saved it in the overlay %s (the original folder is not modified)", src, dst)
    if sharded:
        index = json.loads((src / INDEX_FILE).read_text())
        unlisted = [k for k in head_keys() if k not in index["weight_map"]]
        index["weight_map"].update({k: head_file.name for k in unlisted})
        _write_json(dst / INDEX_FILE, index)
    log.info("vLLM loads %s: an overlay of %s with architecture %s", dst, src, architecture)
    return dst, temporary


def _write_json(path: Path, obj: dict) -> None:
    if path.is_symlink():
        path.unlink()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
