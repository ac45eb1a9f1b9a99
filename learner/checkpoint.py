"""The learners' part of a checkpoint on disk, both directions, in formats that load without
pickles; written by every rank at once, each hashing what it wrote.

In a checkpoint folder (``launch.checkpoint`` owns the step folder, COMPLETE and verify)::

    model/                  theta (and phi) once, as Hugging Face safetensors: one file per layer
                            group (``learner.weight_source.layer_groups``: the embeddings, each
                            decoder layer, the final norm and head), gathered one group at a
                            time under ZeRO-3 and written round-robin by the ranks (group i by
                            rank i % ranks), ``model.safetensors.index.json`` and the head's
                            ``temperature_head.safetensors`` by rank 0 (the layout of an
                            exported model: engines, ``launch.evaluate`` and the export read it)
    learner_rank{r}/
        state.json          {"format", "world_size", "zero_stage", "updates"}: what must match
                            to resume, and the learning-rate schedules' positions
        optimizer_theta.pt  this rank's optimizer state: its ZeRO shard (under ZeRO-3 it holds
                            this rank's fp32 master weights, from which theta is restored: no
                            rank reads or gathers the whole model to resume); under ZeRO-0, where
                            every rank holds the same, rank 0's only
        optimizer_phi.pt    rank 0 (the head is replicated)
        rng.pt              this rank's Python, NumPy, torch (and CUDA) RNG states

The ``.pt`` files hold tensors and plain data only and are read with
``torch.load(weights_only=True)``; the only classes allowed beyond those are DeepSpeed's plain
records inside a ZeRO optimizer's state (``_safe_classes``). Nothing else is unpickled.

Every writer returns ``{path: {"bytes", "sha256"}}`` of the files it wrote (flushed to disk),
so that the manifest (``COMPLETE``) is hashed by all ranks in parallel, each as it writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

FORMAT = 3
"""1: one pickled learner_rank{r}.pt; 2: every rank's full theta.safetensors beside its optimizer;
3: this layout"""

MODEL, STATE, RNG = "model", "state.json", "rng.pt"
INDEX = "model.safetensors.index.json"


def rank_dir(ckpt: str | os.PathLike, rank: int) -> Path:
    """The folder of learner rank `rank` inside a checkpoint."""
    return Path(ckpt) / f"learner_rank{rank}"


def optimizer_file(part: str) -> str:
    return f"optimizer_{part}.pt"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)  # hashlib releases the GIL: files hash in parallel in threads
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    """{"bytes", "sha256"} of a file just written, flushed to the disk first (COMPLETE may only
    name what is on the disk)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


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


# ----------------------------------------------------------------------------- model/


def write_weights(theta: nn.Module, sharded: bool, head: nn.Module | None, out: Path,
                  rank: int, world_size: int) -> dict[Path, dict]:
    """theta's weights (Hugging Face names) into ``out`` as described in the module docstring;
    every rank calls it (ZeRO-3 gathers one layer group at a time). ``head``: the module whose
    ``temperature_head`` rank 0 writes (None: no head). Returns this rank's files' entries."""
    from safetensors.torch import save_file

    from learner.weight_source import gathered, layer_groups
    from rollout.vllm_overlay import HEAD_FILE, save_head

    out.mkdir(parents=True, exist_ok=True)
    params = dict(theta.named_parameters())  # a tied LM head appears once: as the embedding
    groups = layer_groups(list(params))
    files = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    written = {}
    for i, (group, name) in enumerate(zip(groups, files)):
        mine = i % world_size == rank
        with gathered([params[n] for n in group] if sharded else []):
            if mine:
                save_file({n: params[n].data.detach().contiguous() for n in group},
                          str(out / name), metadata={"format": "pt"})
        if mine:  # hashed while the other ranks gather and write the next groups
            written[out / name] = file_entry(out / name)
    if rank == 0:
        size = sum(int(np.prod(getattr(p, "ds_shape", p.shape))) * p.element_size()
                   for p in params.values())
        index = {"metadata": {"total_size": size},
                 "weight_map": {n: f for g, f in zip(groups, files) for n in g}}
        (out / INDEX).write_text(json.dumps(index, indent=1))
        written[out / INDEX] = file_entry(out / INDEX)
        if head is not None:
            save_head(out, head.temperature_head.state_dict())
            written[out / HEAD_FILE] = file_entry(out / HEAD_FILE)
    return written


def read_weights(model_dir: str | os.PathLike) -> dict[str, Tensor]:
    """The weights ``write_weights`` wrote (theta + ``temperature_head.*``), as the engines load
    them."""
    from safetensors.torch import load_file

    from rollout.vllm_overlay import HEAD_FILE

    d = Path(model_dir)
    if not (d / INDEX).is_file():
        raise FileNotFoundError(f"{d / INDEX} does not exist: {d} is not the model folder of a "
                                f"format-{FORMAT} checkpoint")
    weights: dict[str, Tensor] = {}
    for name in sorted(set(json.loads((d / INDEX).read_text())["weight_map"].values())):
        weights.update(load_file(str(d / name), device="cpu"))
    if (d / HEAD_FILE).is_file():
        weights.update(load_file(str(d / HEAD_FILE), device="cpu"))
    return weights


# ----------------------------------------------------------------------------- learner_rank{r}/


def write_rank(dirpath: str | os.PathLike, meta: dict, optimizers: dict[str, dict],
               rng: dict) -> dict[Path, dict]:
    """A rank's folder: ``meta`` (world_size, zero_stage, updates), the ``optimizers`` it writes
    (part -> state dict) and its RNG states; returns the files' entries."""
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    (d / STATE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1))
    for part, state in optimizers.items():
        torch.save(state, d / optimizer_file(part))
    torch.save(rng, d / RNG)
    return {p: file_entry(p) for p in sorted(d.iterdir())}


def read_state(dirpath: str | os.PathLike) -> dict:
    """A rank folder's state.json, checked to be this format's."""
    d = Path(dirpath)
    if not (d / STATE).exists():
        old = d / f"{d.name}.pt"
        hint = (f" ({old.name} is a format-1 checkpoint, written by an older version: resume "
                f"it with that version)") if old.exists() else ""
        raise FileNotFoundError(f"{d / STATE} does not exist; a learner checkpoint folder holds "
                                f"{STATE}, optimizer_theta.pt and {RNG}{hint}")
    meta = json.loads((d / STATE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{d / STATE}: learner checkpoint format {meta.get('format')!r} is not "
                         f"{FORMAT}; it was written by another version of this project: resume "
                         f"it with that version, or start a new run from its weights")
    return meta
