"""DeepSpeed plumbing for the learner: process-group start-up, engine configs, collectives, copies.

Everything here is mechanics, no RL maths. Known-good facts this module encodes:

* DeepSpeed needs RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, else it tries MPI;
  `init_distributed` sets them (a single process gets rank 0 and a free port).
* The first `deepspeed.initialize` JIT-compiles a shared-memory op used only for tensor-parallel
  inference (48-99 s on CPU); `init_distributed` switches it off before any engine exists.
* gloo on CPU, NCCL on GPU. One process group per process: a second learner built in the same
  process (tests; theta + phi engines) reuses it when rank and world size agree.

deepspeed is imported inside the functions, after the environment is set, so that importing
this module stays cheap and `DS_ACCELERATOR=cpu` is in place before DeepSpeed picks a device.
"""

from __future__ import annotations

import copy
import math
import os
import socket

import torch
from torch import Tensor


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (for a rendezvous this process hosts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_distributed(rank: int = 0, world_size: int = 1, master_addr: str = "127.0.0.1",
                     master_port: int | None = None) -> str:
    """Start (or reuse) this process's torch.distributed group for DeepSpeed; returns the backend.

    world_size == 1 with master_port None picks a free port, so independent single-rank
    learners (tests, notebooks) never collide. Ray actors pass their explicit rank and the
    port the driver chose. Raises if a group already exists with a different rank or size.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank ({rank}) must be in [0, world_size={world_size}); "
                         f"give each learner actor a distinct rank 0..{world_size - 1}")
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch.distributed as dist

    # skip the 48-99 s JIT of a shared-memory op that training never uses
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    backend = "nccl" if cuda else "gloo"
    if dist.is_initialized():
        if dist.get_rank() != rank or dist.get_world_size() != world_size:
            raise RuntimeError(
                f"this process already joined a process group as rank {dist.get_rank()} of "
                f"{dist.get_world_size()}, but a learner asked for rank {rank} of {world_size}; "
                f"run each learner rank in its own process (one Ray actor per rank)")
        return dist.get_backend()
    # DeepSpeed caches a clone of the world group; if another library in this process (vLLM's
    # in-process engine on close) destroyed the group it cloned, that clone is dead: drop it
    from deepspeed.utils import groups
    groups._WORLD_GROUP = None
    if master_port is None:
        master_port = free_port() if world_size == 1 else 29500
    local_rank = rank % torch.cuda.device_count() if cuda and torch.cuda.device_count() > 1 else 0
    env = dict(RANK=rank, WORLD_SIZE=world_size, LOCAL_RANK=local_rank, MASTER_ADDR=master_addr,
               MASTER_PORT=master_port)
    os.environ.update({k: str(v) for k, v in env.items()})
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                               rank=rank, world_size=world_size)
    return backend


def ds_config(micro_batch_size: int, grad_clip: float, zero_stage: int,
              dtype: str = "float32", offload_optimizer: bool = False,
              offload_params: bool = False) -> dict:
    """A DeepSpeed config for a client (torch AdamW) optimizer with caller-owned accumulation.

    gradient_accumulation_steps is 1: the learner marks the accumulation boundary itself
    (`engine.set_gradient_accumulation_boundary`), so a mini-batch may hold any number of
    micro-batches and `engine.backward` divides the loss by 1 (see the worker's loss scaling).
    The micro-batch size is bookkeeping only: no DeepSpeed data loader is used.

    offload_optimizer / offload_params: DeepSpeed's CPU offload of the optimizer state (ZeRO
    1-3) / of the parameter partitions (ZeRO-3), pinned on GPUs. The client AdamW then steps
    the CPU copies (DeepSpeed would otherwise insist on its DeepSpeedCPUAdam, a compiled op:
    ``zero_force_ds_cpu_optimizer`` off).
    """
    zero: dict = {"stage": zero_stage}
    pin = torch.cuda.is_available()
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    cfg: dict = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch AdamW as the client optimizer
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if offload_optimizer or offload_params:
        cfg["zero_force_ds_cpu_optimizer"] = False
    if dtype == "bfloat16":
        cfg["bf16"] = {"enabled": True, "check_grad_overflow": True}  # skip NaN/inf steps
    elif dtype == "float16":
        cfg["fp16"] = {"enabled": True}  # dynamic loss scaling skips overflowing steps
    elif dtype != "float32":
        raise ValueError(f"dtype ({dtype!r}) must be float32, bfloat16 or float16; "
                         f"set e.g. model.dtype=float32 (float32 on CPU)")
    return cfg


def load_model(path: str, dtype: torch.dtype, config: dict):
    """The causal LM of the folder ``path``. Under ZeRO-3 (``config``'s stage) it is built inside
    DeepSpeed's ``zero.Init`` with no weights, every parameter partitioned as it is created, and
    each rank copies its own slice of every tensor from the memory-mapped safetensors
    (``_load_own_slices``): no rank holds the whole model, nor reads more than its share of it.
    A folder without safetensors, or whose tensor names are not the model's own (names
    transformers converts while loading: another prefix, an MoE's experts stored one by one),
    goes through transformers' ZeRO-3 loading (``HfDeepSpeedConfig``), which partitions as it
    loads but has rank 0 copy every tensor. Other stages: every rank loads all of it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if config["zero_optimization"]["stage"] != 3:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model_config = AutoConfig.from_pretrained(path)
    files = _safetensors_of(path)
    if files is not None:
        with torch.device("meta"):  # the parameter names only: no memory
            names = AutoModelForCausalLM.from_config(model_config, dtype=dtype).named_parameters()
            if not {n for n, _ in names} <= files.keys():
                files = None
    if files is None:
        from transformers.integrations import HfDeepSpeedConfig

        scope = HfDeepSpeedConfig(config)  # held weakly by transformers: ZeRO-3 while alive
        try:
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        finally:
            del scope
    import deepspeed
    from transformers.initialization import no_init_weights

    with no_init_weights(), deepspeed.zero.Init(config_dict_or_path=config):
        model = AutoModelForCausalLM.from_config(model_config, dtype=dtype)
    model.tie_weights()  # a tied LM head is the embedding's parameter
    _load_own_slices(model, files)
    return model


def _safetensors_of(path: str) -> dict[str, str] | None:
    """{tensor name: its safetensors file} of a model folder (sharded or not), None if it has
    none."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: str(folder / f) for k, f in json.loads(index.read_text())["weight_map"].items()}
    found = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            found.update({k: str(f) for k in sf.keys()})
    return found or None


@torch.no_grad()
def _load_own_slices(model: torch.nn.Module, files: dict[str, str]) -> None:
    """Fill each ZeRO-3 parameter's partition (``ds_tensor``: this rank's range of the flattened,
    padded tensor) from the files (``files`` names every parameter), reading only the rows that
    hold it; small parameters ZeRO-3 keeps whole on every rank (``ds_persist``) are filled
    whole."""
    import torch.distributed as dist
    from safetensors import safe_open

    rank = dist.get_rank() if dist.is_initialized() else 0
    opened: dict[str, object] = {}
    try:
        for name, p in model.named_parameters():  # a tied LM head appears once
            f = files[name]
            if f not in opened:
                opened[f] = safe_open(f, framework="pt").__enter__()
            part = opened[f].get_slice(name)
            shape = part.get_shape()
            row = math.prod(shape[1:])  # elements per row (1 for a vector or a scalar)
            size, start = p.ds_tensor.ds_numel, rank * p.ds_tensor.ds_numel
            p.ds_tensor.zero_()  # the padding of the last rank's range stays 0
            r0, r1 = start // row, min(shape[0] if shape else 1, -(-(start + size) // row))
            if r0 < r1:
                flat = (part[r0:r1] if shape else part[:]).reshape(-1)
                off = start - r0 * row
                n = min(size, flat.numel() - off)
                p.ds_tensor[:n].copy_(flat[off:off + n])
            if getattr(p, "ds_persist", False) and p.data.numel() == p.ds_numel:
                p.data.copy_(opened[f].get_tensor(name).reshape(p.data.shape))
    finally:
        for handle in opened.values():
            handle.__exit__(None, None, None)


def frozen_model(path: str, dtype: torch.dtype, config: dict, device):
    """A frozen copy of the model (the KL term's reference): under ZeRO-3 partitioned like
    theta (a DeepSpeed engine with no optimizer gathers each layer for its forward, S / ranks per
    rank), else a full copy on ``device``. Returns the module to call."""
    model = load_model(path, dtype, config).eval().requires_grad_(False)
    if config["zero_optimization"]["stage"] != 3:
        return model.to(device)
    import deepspeed

    frozen = {k: v for k, v in config.items() if k not in ("gradient_clipping",)}
    engine, *_ = deepspeed.initialize(model=model, config=frozen)
    engine.module.eval()
    return engine.module


def checkpoint_layers(model: torch.nn.Module) -> None:
    """Gradient checkpointing on ``model``'s decoder layers (transformers', non-reentrant), in a
    model otherwise kept in eval mode: transformers recomputes a layer only when the layer is
    in training mode, so that flag alone is set on the layers (not their submodules: dropout and
    the rest stay as they were, eval: no dropout)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no layers transformers can checkpoint; set "
                         f"learner.gradient_checkpointing=false")
    for layer in layers:
        layer.training = True


def build_engine(module: torch.nn.Module, lr: float, weight_decay: float, config: dict):
    """deepspeed.initialize with a torch AdamW client optimizer over the trainable parameters."""
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, config=config)
    return engine


def warmup_factor(updates: int, warmup_steps: int) -> float:
    """Constant schedule after a linear warm-up: update n (0-based) uses min(1, (n + 1) / warmup).

    Unlike transformers' constant-with-warmup (factor n / warmup), the first update is not
    wasted at learning rate 0; warmup_steps 0 = the full rate from the first update.
    """
    return 1.0 if warmup_steps <= 0 else min(1.0, (updates + 1) / warmup_steps)


def set_lr(engine, lr: float) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce(x: Tensor, op: str = "sum") -> Tensor:
    """In-place all-reduce (sum | max | min) across learner ranks; a no-op on one rank."""
    import torch.distributed as dist

    if world_size() == 1:
        return x
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if dist.get_backend() == "nccl" and not x.is_cuda:  # NCCL reduces device tensors only
        y = x.cuda()
        dist.all_reduce(y, op=ops[op])
        return x.copy_(y.cpu())
    dist.all_reduce(x, op=ops[op])
    return x


def cpu_clone(obj):
    """A deep copy with every tensor detached and copied to CPU (state dicts hold live
    references)."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, cpu_clone(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_clone(v) for v in obj)
    return copy.deepcopy(obj)


def full_state_dict(engine, zero_stage: int) -> dict[str, Tensor]:
    """The module's full state dict on CPU; under ZeRO-3 every rank must call it (a gather)."""
    module = engine.module
    if zero_stage < 3:
        return cpu_clone(module.state_dict())
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return cpu_clone(module.state_dict())


def grad_norm_of_params(module: torch.nn.Module) -> float:
    """Global L2 norm of the parameters' .grad (stage 0: all-reduced already, same on every
    rank)."""
    norms = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
