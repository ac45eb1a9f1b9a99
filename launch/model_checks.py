"""Every setting that depends on the model, checked against the model folder before anything
starts: ``check_model(run, path)``, called by ``launch.inputs.resolve_model_path`` (so a training
run, ``launch.evaluate`` and the benchmarks all run it, before Ray starts).

It reads ``config.json`` (through transformers' ``AutoConfig``, the nested ``text_config`` of
multimodal-style configs included) and loads the tokenizer (``AutoTokenizer``, ~3 s, most of it
importing transformers); it never imports Ray, vLLM or DeepSpeed. Each rule mirrors the
component that would otherwise fail later, inside a Ray actor, with a long traceback (vLLM 0.32 /
transformers 5 / DeepSpeed 0.19 sources named below). A broken rule raises ``ConfigError`` with
one line: the setting, its value, the rule and the fix.

1. Architecture: transformers' ``AutoModelForCausalLM`` loads the ``model_type`` (the learner
   always loads the model with it, and so does ``rollout=hf``); with ``rollout=vllm``,
   ``architectures[0]`` is one of vLLM's text-generation architectures, the classes
   ``Tempo<Arch>`` subclasses (``rollout.vllm_model.register_architecture``). The list is read
   from vLLM's registry source without importing vLLM (the import takes ~8 s on 2 CPU cores).
2. Tensor parallelism (``rollout=vllm`` only; the transformers engine ignores it): vLLM needs the
   attention heads divisible by ``rollout.tensor_parallel_size`` (``ModelConfig.
   verify_with_parallel_config``), the KV heads divisible by it or it divisible by them (then each
   KV head is replicated: ``QKVParallelLinear``) and ``intermediate_size`` divisible by it
   (``MergedColumnParallelLinear``); on CPU one CPU per rank (``rollout.vllm_compat.cpu_groups``).
3. Head size (``rollout=vllm`` on CPU): vLLM's CPU attention (``CPUAttentionBackend.
   get_supported_head_sizes``) runs head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224, 256 and
   512 only. On GPU vLLM picks among several backends with other limits: not checked here.
4. Context: ``rollout.max_prompt_tokens + rollout.max_new_tokens`` (the engine's
   ``max_model_len``) fits the model's context as vLLM derives it: the smallest of the length keys
   vLLM reads (``max_position_embeddings``, ``n_positions``, ...) and the tokenizer's
   ``model_max_length``, times the RoPE scaling factor for the scaling types vLLM multiplies
   (linear, dynamic; YaRN-style configs are already scaled). The transformers engine and the
   learner need it too: past the trained positions the model's outputs are meaningless.
5. dtype: on CPU, float16 needs oneDNN float16 (DeepSpeed's CPU accelerator refuses it
   otherwise: ``Type fp16 is not supported on your device``; vLLM's CPU platform lists float32,
   bfloat16 and float16 on x86 and aarch64); on GPU, bfloat16 needs compute capability >= 8.0
   (vLLM's CUDA platform and DeepSpeed). A joined cluster of unknown kind: not checked.
6. ``data.prompt_template=chat`` needs the tokenizer's chat template.
7. End of sequence: the engines stop on the tokenizer's ``eos_token_id`` and the generation
   config's ``eos_token_id`` (``generation_config.json``, else ``config.json``); one of them must
   exist and lie inside the vocabulary.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from launch.checks import ConfigError
from launch.checks import require as _require
from launch.config import RunConfig

VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
"""vllm/v1/attention/backends/cpu_attn.py, CPUAttentionBackend.get_supported_head_sizes (0.32)"""
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                "model_max_length", "max_target_positions", "max_sequence_length",
                "max_seq_length", "seq_len")
"""the keys vLLM derives the context from, the smallest wins (model_arch_config_convertor.py)"""
ROPE_PRESCALED = ("default", "su", "longrope", "llama3", "yarn", "deepseek_yarn",
                  "deepseek_llama_scaling")
"""RoPE types whose factor vLLM does not multiply into the context (config/model.py)"""


def check_model(run: RunConfig, path: Path) -> None:
    """Check every model-dependent setting of ``run`` against the folder ``path``; raises
    ``ConfigError`` (one line: setting, value, rule, fix) at the first broken rule."""
    raw = _read_json(path / "config.json")
    check_architecture(run, path, raw)
    config = _auto_config(path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    device = run_device(run)
    check_tensor_parallel(run, path, text, device)
    check_head_dim(run, path, text, device)
    tokenizer = _auto_tokenizer(path)
    check_context(run, path, text, tokenizer)
    check_dtype(run, device)
    check_chat_template(run, path, tokenizer)
    check_eos(path, raw, text, tokenizer)


# ----------------------------------------------------------------------------- reading


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path ({file.parent}) has an unreadable {file.name} "
                          f"({type(e).__name__}: {e}); point model.path at a complete Hugging "
                          f"Face model folder") from None


def _auto_config(path: Path):
    return _from_pretrained("AutoConfig", path, "transformers cannot read its config.json",
                            "point model.path at a complete Hugging Face model folder")


def _auto_tokenizer(path: Path):
    return _from_pretrained("AutoTokenizer", path, "has no tokenizer transformers can load",
                            "copy the model's tokenizer files (tokenizer.json, "
                            "tokenizer_config.json) into it")


def _from_pretrained(auto: str, path: Path, what: str, fix: str):
    """``transformers.<auto>.from_pretrained(path)``; a failure is the folder's: one line."""
    import transformers

    try:
        return getattr(transformers, auto).from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any failure here is the folder's
        raise ConfigError(f"model.path ({path}) {what} ({type(e).__name__}: {_first_line(e)}); "
                          f"{fix}") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def run_device(run: RunConfig) -> str | None:
    """The actors' device: ``"cpu"`` or ``"gpu"`` where it is sure, None when unknown (a joined
    cluster with cluster.device=auto)."""
    import torch

    from launch.cluster import known_cpu_only

    if known_cpu_only(run):
        return "cpu"
    if run.cluster.device == "gpu" or (not run.cluster.address and torch.cuda.is_available()):
        return "gpu"
    return None


# ----------------------------------------------------------------------------- architecture


def check_architecture(run: RunConfig, path: Path, raw: dict) -> None:
    """transformers' AutoModelForCausalLM loads it; with rollout=vllm, vLLM serves it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = raw.get("model_type")
    _require(model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "model_type", model_type,
             f"in {path}/config.json is not a causal LM that transformers' "
             f"AutoModelForCausalLM loads (the learner loads the model with it, and so does "
             f"rollout=hf); supported: {', '.join(sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))}",
             "use a causal language model of one of these types")
    if run.rollout.engine != "vllm":
        return
    archs = raw.get("architectures") or []
    arch = archs[0].removeprefix("Tempo") if archs else None
    supported = vllm_causal_lm_architectures()
    _require(supported is not None, "rollout.engine", "vllm", "needs vLLM, which is not "
             "installed in this environment", "install it (scripts/setup.sh), or use rollout=hf")
    _require(arch in supported, "rollout.engine", "vllm",
             f"wraps the vLLM model class of config.json's architectures[0] (Tempo<Arch>), but "
             f"{path}/config.json has architectures {archs}, not one of vLLM's text-generation "
             f"architectures: {', '.join(supported)}",
             "use rollout=hf (transformers), or a model of one of these architectures")


def vllm_causal_lm_architectures() -> tuple[str, ...] | None:
    """vLLM's text-generation architectures (``_TEXT_GENERATION_MODELS`` of its model registry),
    read from the installed source without importing vLLM; None when vLLM is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")  # a top-level name: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(spec.submodule_search_locations[0], "model_executor", "models", "registry.py")
    try:
        tree = ast.parse(source.read_text())
    except (OSError, SyntaxError):
        tree = None
    for node in tree.body if tree else ():
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if (isinstance(target, ast.Name) and target.id == "_TEXT_GENERATION_MODELS"
                and isinstance(node.value, ast.Dict)):
            return tuple(sorted(k.value for k in node.value.keys
                                if isinstance(k, ast.Constant) and isinstance(k.value, str)))
    from vllm import ModelRegistry  # the registry's layout changed: ask vLLM itself (slow)

    return tuple(sorted(ModelRegistry.get_supported_archs()))


# ----------------------------------------------------------------------------- engine shape


def tensor_parallel_problem(tp: int, heads: int | None, kv_heads: int | None,
                            intermediate: int | None, where: str = "") -> str | None:
    """What vLLM (0.32) refuses about splitting this model over ``tp`` ranks, or None
    (``where``: the config's location, named in the message)."""
    if heads and heads % tp:
        return (f"must divide the model's attention heads (num_attention_heads={heads}{where}): "
                f"vLLM gives every rank the same number of heads")
    if kv_heads and (kv_heads % tp if kv_heads >= tp else tp % kv_heads):
        return (f"must divide the model's KV heads (num_key_value_heads={kv_heads}{where}) or be "
                f"a multiple of them (vLLM then replicates each KV head)")
    if intermediate and intermediate % tp:
        return (f"must divide the model's MLP width (intermediate_size={intermediate}{where}): "
                f"vLLM splits it evenly across ranks")
    return None


def check_tensor_parallel(run: RunConfig, path: Path, text, device: str | None) -> None:
    """rollout=vllm: the heads, KV heads and MLP split evenly; on CPU one CPU per rank."""
    tp = run.rollout.tensor_parallel_size
    if run.rollout.engine != "vllm" or tp == 1:
        return
    heads = getattr(text, "num_attention_heads", None)
    shape = (heads, getattr(text, "num_key_value_heads", None) or heads,
             getattr(text, "intermediate_size", None))
    problem = tensor_parallel_problem(tp, *shape, where=f" in {path}/config.json")
    if problem:
        valid = [t for t in range(1, (heads or 1) + 1) if not tensor_parallel_problem(t, *shape)]
        raise ConfigError(f"rollout.tensor_parallel_size ({tp}) {problem}; set "
                          f"rollout.tensor_parallel_size to one this model splits into: "
                          f"{', '.join(map(str, valid))}")
    if device == "cpu":
        cpus = _usable_cpus()
        _require(tp <= cpus, "rollout.tensor_parallel_size", tp,
                 f"needs {tp} CPUs on a CPU build of vLLM (each rank's worker process is bound "
                 f"to its own CPUs), but this process may use {cpus}",
                 f"set rollout.tensor_parallel_size to at most {cpus}")


def _usable_cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1


def head_dim_of(text) -> int | None:
    """``head_dim`` if the config sets it, else hidden_size // num_attention_heads."""
    head_dim = getattr(text, "head_dim", None)
    heads, hidden = getattr(text, "num_attention_heads", None), getattr(text, "hidden_size", None)
    return head_dim or (hidden // heads if heads and hidden else None)


def check_head_dim(run: RunConfig, path: Path, text, device: str | None) -> None:
    """rollout=vllm on CPU: a head size vLLM's CPU attention runs."""
    if run.rollout.engine != "vllm" or device != "cpu" or getattr(text, "kv_lora_rank", None):
        return  # kv_lora_rank: multi-head latent attention, another CPU backend
    head_dim = head_dim_of(text)
    if head_dim is None or head_dim in VLLM_CPU_HEAD_SIZES:
        return
    raise ConfigError(f"rollout.engine (vllm) on CPU runs only the head sizes "
                      f"{', '.join(map(str, VLLM_CPU_HEAD_SIZES))} (vLLM's CPU attention), but "
                      f"this model's head_dim is {head_dim} ({path}/config.json); use rollout=hf "
                      f"(transformers runs any head size), or a model with one of these head sizes")


# ----------------------------------------------------------------------------- lengths, dtype


def context_of(text, tokenizer) -> tuple[int | None, str]:
    """(the model's context as vLLM derives it, where it comes from), or (None, "")."""
    found = [(int(v), k) for k in CONTEXT_KEYS
             if isinstance(v := getattr(text, k, None), (int, float)) and v > 0]
    if not found:
        return None, ""
    context, source = min(found)
    source = f"{source} in config.json"
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < context:
        context, source = limit, "model_max_length in tokenizer_config.json"
    factor = _rope_factor(getattr(text, "rope_parameters", None)
                          or getattr(text, "rope_scaling", None))
    if factor != 1.0:
        context, source = int(context * factor), f"{source} x RoPE scaling factor {factor:g}"
    return context, source


def _rope_factor(rope) -> float:
    """The factor vLLM multiplies the context by for this RoPE config (1.0: none)."""
    if not isinstance(rope, dict):
        return 1.0
    if not any(k in rope for k in ("rope_type", "type", "factor")):  # per layer type
        return next((f for r in rope.values() if (f := _rope_factor(r)) != 1.0), 1.0)
    kind = rope.get("rope_type") or rope.get("type") or "default"
    return float(rope.get("factor") or 1.0) if kind not in ROPE_PRESCALED else 1.0


def check_context(run: RunConfig, path: Path, text, tokenizer) -> None:
    """max_prompt_tokens + max_new_tokens fits the model's context."""
    context, source = context_of(text, tokenizer)
    r = run.rollout
    total = r.max_prompt_tokens + r.max_new_tokens
    if context is None or total <= context:
        return
    raise ConfigError(f"rollout.max_prompt_tokens + rollout.max_new_tokens ({r.max_prompt_tokens} "
                      f"+ {r.max_new_tokens} = {total}) must be <= the model's context, {context} "
                      f"({source}, {path}); lower rollout.max_prompt_tokens or "
                      f"rollout.max_new_tokens so that they sum to <= {context}")


def dtype_problem(dtype: str, device: str | None, cpu_float16: bool,
                  gpu_capability: tuple[int, int] | None) -> str | None:
    """Why ``dtype`` cannot run on ``device`` (``cpu_float16``: oneDNN float16 on this CPU;
    ``gpu_capability``: the GPU's compute capability), or None."""
    if device == "cpu" and dtype == "float16" and not cpu_float16:
        return ("is not supported by the learner on this CPU: DeepSpeed's CPU accelerator needs "
                "oneDNN float16 (AVX512-FP16 or AMX-FP16), which this CPU lacks")
    if device == "gpu" and dtype == "bfloat16" and gpu_capability and gpu_capability < (8, 0):
        return (f"needs a GPU of compute capability >= 8.0 (vLLM and DeepSpeed), but this one's "
                f"is {gpu_capability[0]}.{gpu_capability[1]}")
    return None


def check_dtype(run: RunConfig, device: str | None) -> None:
    """model.dtype is one the learner and the engine run on this device."""
    import torch

    dtype = run.model.dtype
    cpu_float16 = device == "cpu" and dtype == "float16" and _cpu_float16()
    capability = (torch.cuda.get_device_capability() if device == "gpu"
                  and torch.cuda.is_available() else None)
    problem = dtype_problem(dtype, device, cpu_float16, capability)
    if problem:
        fix = "bfloat16 (or float32)" if dtype == "float16" else "float16 (or float32)"
        raise ConfigError(f"model.dtype ({dtype}) {problem}; set model.dtype={fix}")


def _cpu_float16() -> bool:
    """Whether this CPU runs oneDNN float16: what DeepSpeed's CPU accelerator asks
    (``is_fp16_supported``)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except Exception:  # noqa: BLE001 - an older torch: not supported, as DeepSpeed decides
        return False


# ----------------------------------------------------------------------------- tokenizer


def check_chat_template(run: RunConfig, path: Path, tokenizer) -> None:
    """data.prompt_template=chat: the tokenizer has a chat template."""
    _require(run.data.prompt_template != "chat" or bool(getattr(tokenizer, "chat_template", None)),
             "data.prompt_template", "chat",
             f"renders each question with the tokenizer's chat template, but the tokenizer of "
             f"{path} has none (tokenizer_config.json, chat_template.jinja)",
             "set data.prompt_template=plain (a base model), or add the model's chat template")


def eos_ids(path: Path, raw: dict, tokenizer) -> list[int]:
    """The end-of-sequence ids the folder declares, which the engines stop on: the generation
    config's eos_token_id (generation_config.json, else config.json's, ``text_config``'s) and the
    tokenizer's. A config class's default id (LlamaConfig's 2) is no declaration: not counted."""
    gen = path / "generation_config.json"
    ids = _read_json(gen).get("eos_token_id") if gen.exists() else None
    if ids is None:
        ids = raw.get("eos_token_id", (raw.get("text_config") or {}).get("eos_token_id"))
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def check_eos(path: Path, raw: dict, text, tokenizer) -> None:
    """An end-of-sequence token the engines stop on, inside the vocabulary."""
    ids = eos_ids(path, raw, tokenizer)
    _require(bool(ids), "model.path", str(path),
             "has no end-of-sequence token: the tokenizer has no eos_token and config.json / "
             "generation_config.json no eos_token_id, so every response would run to "
             "rollout.max_new_tokens",
             "set eos_token in its tokenizer_config.json (for a chat model: the template's "
             "end-of-turn token, e.g. <|im_end|>)")
    vocab = getattr(text, "vocab_size", None)
    outside = [i for i in ids if vocab and not 0 <= i < vocab]
    _require(not outside, "model.path", str(path),
             f"has end-of-sequence token id(s) {outside} outside the model's vocabulary "
             f"(vocab_size={vocab}): the model can never produce them",
             "fix eos_token_id in config.json / generation_config.json or eos_token in "
             "tokenizer_config.json")
