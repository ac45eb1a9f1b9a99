"""Plain payloads for the engine's RPCs to vLLM's workers (``collective_rpc``).

With the engine core in its own process, vLLM carries RPC arguments and results as msgpack and
refuses to pickle objects (unless ``VLLM_ALLOW_INSECURE_SERIALIZATION=1``, which the project never
sets), and an untyped msgpack tensor arrives as a bare list. So everything the engine sends or
gets back is plain data: strategies as ``TemperatureStrategy.spec()`` dicts, per-token records as
lists of floats, and tensors as ``{"dtype", "shape", "data": bytes}`` (``pack``). ``unpack`` also
accepts a tensor as it is, so an in-process engine sends its weights without a copy.
"""

from __future__ import annotations

import torch
from torch import Tensor

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}


def pack(t: Tensor) -> dict:
    """A tensor as plain data (a CPU copy of its bytes)."""
    t = t.detach().to("cpu").contiguous()
    name = str(t.dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise TypeError(f"cannot send a {t.dtype} tensor to vLLM's workers; "
                        f"supported: {sorted(_DTYPES)}")
    return {"dtype": name, "shape": list(t.shape), "data": t.reshape(-1).view(torch.uint8)
            .numpy().tobytes()}


def unpack(x) -> Tensor:
    """The tensor of ``pack(t)`` (or ``x`` itself when it is already a tensor)."""
    if isinstance(x, Tensor):
        return x
    if not isinstance(x, dict) or set(x) != {"dtype", "shape", "data"}:
        raise TypeError(f"expected a tensor or rollout.vllm_payload.pack(tensor), got {type(x)}")
    dtype = _DTYPES[x["dtype"]]
    if not x["data"]:
        return torch.empty(x["shape"], dtype=dtype)
    flat = torch.frombuffer(bytearray(x["data"]), dtype=torch.uint8)
    return flat.view(dtype).reshape(x["shape"])


def pack_state(sd: dict[str, Tensor]) -> dict[str, dict]:
    return {k: pack(v) for k, v in sd.items()}


def unpack_state(sd: dict) -> dict[str, Tensor]:
    return {k: unpack(v) for k, v in sd.items()}
