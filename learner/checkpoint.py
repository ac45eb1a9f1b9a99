"""A learner rank's checkpoint on disk, both directions, in formats that load without pickles.

One folder per rank, ``learner_rank{r}/``::

    state.json            {"format", "world_size", "zero_stage", "updates"}: what must match to
                          resume, and the learning-rate schedules' positions
    theta.safetensors     theta's full weights, Hugging Face names
    phi.safetensors       the temperature head's weights (``temperature_head.*``); head-owning
                          strategies only
    optimizer_theta.pt    this rank's optimizer state (its ZeRO shard)
    optimizer_phi.pt
    rng.pt                the Python, NumPy, torch (and CUDA) RNG states as tensors and numbers

The ``.pt`` files hold tensors and plain data only and are read with
``torch.load(weights_only=True)``; the only classes allowed beyond those are DeepSpeed's plain
records inside a ZeRO optimizer's state (``SAFE_CLASSES``). Nothing else is unpickled.

``write_rank`` writes into the folder it is given; atomicity and integrity (the ``COMPLETE``
manifest with sizes and checksums) belong to the step folder above it (``launch.checkpoint``).
``read_weights`` gives the weights the rollout engines load (theta + phi), without the
optimizer.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FORMAT = 2
"""1: one pickled learner_rank{r}.pt (no longer read); 2: this layout"""

STATE, THETA, PHI, RNG = "state.json", "theta.safetensors", "phi.safetensors", "rng.pt"


def optimizer_file(part: str) -> str:
    return f"optimizer_{part}.pt"


def _safe_classes() -> list:
    """DeepSpeed's records inside ZeRO / mixed-precision optimizer state dicts (plain data)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | os.PathLike):
    """torch.load with weights_only=True (tensors, plain containers, numbers, strings) plus
    DeepSpeed's optimizer records; an error names the file and what it held."""
    try:
        with torch.serialization.safe_globals(_safe_classes()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # re-raised with the file's name
        raise ValueError(f"{path} does not load as tensors and plain data "
                         f"(torch.load(weights_only=True)): {e}") from e


def rng_state() -> dict:
    """This process's RNG states as tensors and numbers (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # tied weights (embeddings / LM head) share storage, which safetensors refuses: the second
    # and later names of one storage get a copy of their own (the rest are written as they are)
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().contiguous()
        storage = v.untyped_storage().data_ptr()
        out[k] = v.clone() if storage in seen else v
        seen.add(storage)
    save_file(out, str(path))


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def write_rank(dirpath: str | os.PathLike, state: dict) -> None:
    """Write a rank's state (``LearnerWorker.state_dict()``: meta fields, theta/phi {module,
    optimizer}, rng) into `dirpath` (created)."""
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    meta = {k: state[k] for k in ("world_size", "zero_stage", "updates")}
    (d / STATE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1))
    for part, name in (("theta", THETA), ("phi", PHI)):
        if part in state:
            _save_tensors(state[part]["module"], d / name)
            torch.save(state[part]["optimizer"], d / optimizer_file(part))
    torch.save(state["rng"], d / RNG)


def _read_state(d: Path) -> dict:
    if not (d / STATE).exists():
        old = d / f"{d.name}.pt"
        hint = (f" ({old.name} is a format-1 checkpoint, written by an older version: resume "
                f"it with that version)") if old.exists() else ""
        raise FileNotFoundError(f"{d / STATE} does not exist; a learner checkpoint folder holds "
                                f"{STATE}, {THETA}, optimizer_theta.pt and {RNG}{hint}")
    meta = json.loads((d / STATE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d / STATE}: learner checkpoint format {meta.get('format')!r} is not "
                         f"{FORMAT}; it was written by another version")
    return meta


def read_rank(dirpath: str | os.PathLike) -> dict:
    """The state `write_rank` wrote, as ``LearnerWorker.load_state_dict`` takes it."""
    d = Path(dirpath)
    state = _read_state(d)
    for part, name in (("theta", THETA), ("phi", PHI)):
        if (d / name).exists():
            state[part] = {"module": _load_tensors(d / name),
                           "optimizer": safe_load(d / optimizer_file(part))}
    state["rng"] = safe_load(d / RNG)
    return state


def read_weights(dirpath: str | os.PathLike) -> dict[str, Tensor]:
    """theta's weights plus the head's (``temperature_head.*``), as the rollout engines load
    them; no optimizer state is read."""
    d = Path(dirpath)
    _read_state(d)
    weights = _load_tensors(d / THETA)
    if (d / PHI).exists():
        weights.update(_load_tensors(d / PHI))
    return weights
