"""A user's own model: every model-dependent setting is checked against the model folder before
anything starts (``launch.model_checks``), one line each: setting, value, rule, fix.

The model folders are written here (config.json, a word-level tokenizer, an empty safetensors
file): the checks read the config and the tokenizer only. The default folder has the shape of the
model in the issue (a Llama of 9 attention heads, 3 KV heads, head_dim 64, tied embeddings, a
chat template).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from launch.config import ConfigError, validate
from launch.inputs import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "user", "assistant",
         *"0123456789", *"+-*/=()?"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
         "intermediate_size": 1536, "num_hidden_layers": 1, "num_attention_heads": 9,
         "num_key_value_heads": 3, "vocab_size": 64, "max_position_embeddings": 2048,
         "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 3}
TOKENIZER = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
             "pad_token": "<|endoftext|>", "unk_token": "<unk>", "chat_template": CHAT_TEMPLATE}
HEAVY = ("ray", "vllm", "deepspeed")


def write_model(folder: Path, config: dict | None = None, tokenizer: dict | None = None,
                drop: tuple[str, ...] = ()) -> Path:
    """A model folder: LLAMA updated by ``config``, TOKENIZER by ``tokenizer``, keys in ``drop``
    removed from both."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(WORDS[1:4])
    tok.save(str(folder / "tokenizer.json"))
    for name, base, extra in (("config.json", LLAMA, config), ("tokenizer_config.json", TOKENIZER,
                                                                 tokenizer)):
        content = {k: v for k, v in {**base, **(extra or {})}.items() if k not in drop}
        (folder / name).write_text(json.dumps(content))
    header = b'{"__metadata__":{"format":"pt"}}'  # a valid safetensors file with no tensors
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return folder


def compose_run(folder: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=local", f"model.path={folder}",
                                                       "cluster.device=cpu", *overrides])
    return validate(cfg)


def check(folder: Path, *overrides: str) -> str | None:
    """The one-line message of the model checks (None: they pass); asserts they imported none of
    Ray, vLLM, DeepSpeed (so started nothing)."""
    run = compose_run(folder, *overrides)
    before = set(sys.modules)
    try:
        resolve_model_path(run)
        message = None
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message
    new = {m.split(".")[0] for m in set(sys.modules) - before}
    assert not new & set(HEAVY), f"the checks imported {new & set(HEAVY)}"
    return message


@pytest.fixture
def model(tmp_path):
    return write_model(tmp_path / "model")


def test_the_issues_model_passes_every_check(model):
    """tensor_parallel_size 3 splits 9 heads, 3 KV heads and 1536 wide MLPs."""
    assert check(model) is None
    assert check(model, "rollout=hf") is None
    assert check(model, "rollout.tensor_parallel_size=3", "cluster.device=gpu") is None


def test_tensor_parallel_size_must_divide_the_attention_heads(model):
    message = check(model, "rollout.tensor_parallel_size=2")
    assert message == (
        f"rollout.tensor_parallel_size (2) must divide the model's attention heads "
        f"(num_attention_heads=9 in {model}/config.json): vLLM gives every rank the same number "
        f"of heads; set rollout.tensor_parallel_size to one this model splits into: 1, 3")
    assert check(model, "rollout=hf", "+rollout.tensor_parallel_size=2") is None  # unused there


def test_tensor_parallel_size_must_divide_the_kv_heads_or_be_a_multiple(tmp_path):
    folder = write_model(tmp_path / "m", {"num_attention_heads": 12, "head_dim": 64})
    message = check(folder, "rollout.tensor_parallel_size=2", "cluster.device=gpu")
    assert message == (
        f"rollout.tensor_parallel_size (2) must divide the model's KV heads "
        f"(num_key_value_heads=3 in {folder}/config.json) or be a multiple of them (vLLM then "
        f"replicates each KV head); set rollout.tensor_parallel_size to one this model splits "
        f"into: 1, 3, 6, 12")
    assert check(folder, "rollout.tensor_parallel_size=6", "cluster.device=gpu") is None


def test_tensor_parallel_size_must_divide_the_mlp(tmp_path):
    folder = write_model(tmp_path / "m", {"num_attention_heads": 8, "num_key_value_heads": 2,
                                          "head_dim": 64, "intermediate_size": 1002})
    message = check(folder, "rollout.tensor_parallel_size=4", "cluster.device=gpu")
    assert message.startswith("rollout.tensor_parallel_size (4) must divide the model's MLP width "
                              f"(intermediate_size=1002 in {folder}/config.json): vLLM splits it "
                              "evenly across ranks; set rollout.tensor_parallel_size to one")
    assert message.endswith("splits into: 1, 2")


def test_tensor_parallel_size_needs_one_cpu_per_rank(tmp_path, monkeypatch):
    import launch.model_checks as mc

    monkeypatch.setattr(mc, "_usable_cpus", lambda: 1)
    folder = write_model(tmp_path / "m", {"num_attention_heads": 8, "num_key_value_heads": 2,
                                          "head_dim": 64})
    assert check(folder, "rollout.tensor_parallel_size=2") == (
        "rollout.tensor_parallel_size (2) needs 2 CPUs on a CPU build of vLLM (each rank's worker "
        "process is bound to its own CPUs), but this process may use 1; set "
        "rollout.tensor_parallel_size to at most 1")


def test_head_dim_must_be_one_vllms_cpu_attention_runs(tmp_path):
    folder = write_model(tmp_path / "m", {"hidden_size": 64, "num_attention_heads": 4,
                                          "num_key_value_heads": 2})
    assert check(folder) == (
        f"rollout.engine (vllm) on CPU runs only the head sizes 32, 64, 80, 96, 112, 128, 160, "
        f"192, 224, 256, 512 (vLLM's CPU attention), but this model's head_dim is 16 "
        f"({folder}/config.json); use rollout=hf (transformers runs any head size), or a model "
        f"with one of these head sizes")
    assert check(folder, "rollout=hf") is None
    assert check(folder, "cluster.device=gpu") is None  # GPU backends: not checked here


def test_prompt_plus_response_must_fit_the_context(tmp_path):
    folder = write_model(tmp_path / "m", {"max_position_embeddings": 128})
    assert check(folder) == (
        f"rollout.max_prompt_tokens + rollout.max_new_tokens (128 + 64 = 192) must be <= the "
        f"model's context, 128 (max_position_embeddings in config.json, {folder}); lower "
        f"rollout.max_prompt_tokens or rollout.max_new_tokens so that they sum to <= 128")
    assert check(folder, "rollout.max_prompt_tokens=64") is None
    # vLLM's derivation: linear RoPE scaling multiplies the context, the tokenizer's limit caps it
    scaled = write_model(tmp_path / "s", {"max_position_embeddings": 128,
                                          "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    assert check(scaled) is None
    capped = write_model(tmp_path / "c", tokenizer={"model_max_length": 160})
    assert "(128 + 64 = 192) must be <= the model's context, 160 (model_max_length in " \
           "tokenizer_config.json" in check(capped)


def test_float16_needs_a_cpu_with_onednn_float16(model, monkeypatch):
    import launch.model_checks as mc

    monkeypatch.setattr(mc, "_cpu_float16", lambda: False)
    assert check(model, "model.dtype=float16") == (
        "model.dtype (float16) is not supported by the learner on this CPU: DeepSpeed's CPU "
        "accelerator needs oneDNN float16 (AVX512-FP16 or AMX-FP16), which this CPU lacks; set "
        "model.dtype=bfloat16 (or float32)")
    monkeypatch.setattr(mc, "_cpu_float16", lambda: True)
    assert check(model, "model.dtype=float16") is None
    assert check(model, "model.dtype=bfloat16") is None


def test_bfloat16_needs_an_ampere_gpu():
    from launch.model_checks import dtype_problem

    assert dtype_problem("bfloat16", "gpu", False, (7, 5)) == (
        "needs a GPU of compute capability >= 8.0 (vLLM and DeepSpeed), but this one's is 7.5")
    assert dtype_problem("bfloat16", "gpu", False, (8, 0)) is None
    assert dtype_problem("float16", None, False, None) is None  # a joined cluster: unknown


def test_chat_template_required_for_the_chat_prompt(tmp_path):
    folder = write_model(tmp_path / "m", drop=("chat_template",))
    assert check(folder) == (
        f"data.prompt_template ('chat') renders each question with the tokenizer's chat "
        f"template, but the tokenizer of {folder} has none (tokenizer_config.json, "
        f"chat_template.jinja); set data.prompt_template=plain (a base model), or add the "
        f"model's chat template")
    assert check(folder, "data.prompt_template=plain") is None


def test_an_end_of_sequence_token_the_engine_stops_on(tmp_path):
    folder = write_model(tmp_path / "m", drop=("eos_token", "eos_token_id"))
    assert check(folder) == (
        f"model.path ('{folder}') has no end-of-sequence token: the tokenizer has no eos_token "
        f"and config.json / generation_config.json no eos_token_id, so every response would run "
        f"to rollout.max_new_tokens; set eos_token in its tokenizer_config.json (for a chat "
        f"model: the template's end-of-turn token, e.g. <|im_end|>)")
    outside = write_model(tmp_path / "o", {"eos_token_id": 99}, drop=("eos_token",))
    assert check(outside) == (
        f"model.path ('{outside}') has end-of-sequence token id(s) [99] outside the model's "
        f"vocabulary (vocab_size=64): the model can never produce them; fix eos_token_id in "
        f"config.json / generation_config.json or eos_token in tokenizer_config.json")
    only_config = write_model(tmp_path / "c", drop=("eos_token",))  # config.json's id 3: enough
    assert check(only_config) is None


def test_architecture_must_be_one_vllm_serves(tmp_path):
    folder = write_model(tmp_path / "m", {"architectures": ["LlamaWithMyHeadForCausalLM"]})
    message = check(folder)
    assert message.startswith(
        f"rollout.engine ('vllm') wraps the vLLM model class of config.json's architectures[0] "
        f"(Tempo<Arch>), but {folder}/config.json has architectures "
        f"['LlamaWithMyHeadForCausalLM'], not one of vLLM's text-generation architectures: ")
    assert "LlamaForCausalLM, " in message and "Qwen2ForCausalLM, " in message
    assert message.endswith("; use rollout=hf (transformers), or a model of one of these "
                            "architectures")
    assert check(folder, "rollout=hf") is None  # transformers loads it by model_type


def test_model_type_must_be_a_transformers_causal_lm(tmp_path):
    folder = write_model(tmp_path / "m", {"model_type": "my_llama"})
    message = check(folder, "rollout=hf")
    assert message.startswith(
        f"model_type ('my_llama') in {folder}/config.json is not a causal LM that "
        f"transformers' AutoModelForCausalLM loads (the learner loads the model with it, and so "
        f"does rollout=hf); supported: ")
    assert "llama, " in message and message.endswith(
        "; use a causal language model of one of these types")


def test_the_vllm_architecture_list_is_vllms_own():
    """Read from vLLM's registry source without importing vLLM: the same names vLLM has."""
    from launch.model_checks import vllm_causal_lm_architectures

    names = vllm_causal_lm_architectures()
    from vllm.model_executor.models.registry import _TEXT_GENERATION_MODELS

    assert names == tuple(sorted(_TEXT_GENERATION_MODELS))
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"} <= set(names)


def test_the_embedded_model_and_the_test_models_pass(tiny_model_dir, tmp_path):
    """The test fixture (head_dim 32), and the embedded default's shape (same build, wider)."""
    assert check(tiny_model_dir, "+experiment=smoke") is None
    assert check(tiny_model_dir, "rollout.tensor_parallel_size=2", "model.dtype=float32") is None
    default = tmp_path / "embedded-shape"
    default.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.is_file():
            (default / f.name).write_bytes(f.read_bytes())
    config = json.loads((default / "config.json").read_text())
    config.update(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    config["layer_types"] = ["full_attention"] * 4
    (default / "config.json").write_text(json.dumps(config))
    assert check(default, "+experiment=introllm", "model.dtype=float32") is None


def test_bad_tensor_parallel_size_stops_the_run_in_seconds_before_ray(model, tmp_path):
    """The issue's command: exit status 2, one `config error:` line, no traceback, no Ray."""
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "launch.run", "+experiment=smoke", "model=local",
           f"model.path={model}", "rollout.tensor_parallel_size=2", "wandb.mode=disabled",
           f"hydra.run.dir={tmp_path / 'run'}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - t0
    assert out.returncode == 2, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert lines == [
        f"config error: rollout.tensor_parallel_size (2) must divide the model's attention heads "
        f"(num_attention_heads=9 in {model}/config.json): vLLM gives every rank the same number "
        f"of heads; set rollout.tensor_parallel_size to one this model splits into: 1, 3"]
    assert "Traceback" not in out.stdout + out.stderr
    assert list(ray_tmp.iterdir()) == []  # no Ray session was created
    assert seconds < 30, seconds  # ~6 s on 2 CPU cores, most of it importing torch/transformers
    print(f"command to message: {seconds:.1f}s")


def test_known_harmless_reload_warnings_are_dropped_others_kept():
    """A tied LM head and a buffers-only layer (rotary cache) lose nothing in vLLM's reload."""
    import torch

    from rollout.vllm_worker import _FAILED, _RELOAD_LOGGERS, _drop_restored

    class Rotary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("cos_sin_cache", torch.ones(4), persistent=False)

    class Head(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.weight = weight

    embed = torch.nn.Embedding(8, 4)
    model = torch.nn.ModuleDict({"embed": embed, "rotary": Rotary(),
                                 "mlp": torch.nn.Linear(4, 4), "lm_head": Head(embed.weight)})
    got: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            got.append(record.getMessage())

    logger = logging.getLogger(_RELOAD_LOGGERS[0])
    handler = Collect()
    logger.addHandler(handler)
    try:
        with _drop_restored(model):
            for layer in ("Rotary", "Head", "Linear"):
                logger.warning(_FAILED, layer)
        logger.warning(_FAILED, "Head")  # outside a sync: untouched
    finally:
        logger.removeHandler(handler)
    assert got == ["Linear: Failed to load weights", "Head: Failed to load weights"]
