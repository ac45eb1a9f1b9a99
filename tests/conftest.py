"""Shared fixtures: a tiny model built in seconds (quality irrelevant), and thread settings."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: more threads is slower

QUICK_SPEC_KW = dict(sft_examples=1000, sft_steps=3, batch_size=8, hidden_size=64,
                     intermediate_size=128, num_layers=1, num_heads=2, num_kv_heads=1)
# head_dim 32: the smallest head size vLLM's CPU attention accepts


# The vLLM engine shapes the engine tests run in (tests/test_rollout_vllm.py,
# tests/test_rollout_engines_agree.py). Model runner V2 needs a Triton CPU backend that exists
# only as a test stub (tests/triton_stub), installed before vLLM is first imported, so the V2
# shapes run in a fresh interpreter: tests/test_rollout_vllm_v2.py
VLLM_SHAPES = {
    "v1-inproc": dict(runner="v1", engine_core="inproc"),
    "v1-process": dict(runner="v1", engine_core="process"),
    "v1-inproc-tp2": dict(runner="v1", engine_core="inproc", tensor_parallel_size=2),
    "v2-inproc": dict(runner="v2", engine_core="inproc"),
    "v2-process": dict(runner="v2", engine_core="process"),
}
VLLM_SHAPES_ENV = "TEMPO_TEST_VLLM_SHAPES"


def vllm_shapes() -> list[str]:
    """$TEMPO_TEST_VLLM_SHAPES (comma-separated names of VLLM_SHAPES), default: the V1 shapes."""
    names = os.environ.get(VLLM_SHAPES_ENV, "v1-inproc,v1-process,v1-inproc-tp2").split(",")
    unknown = [n for n in names if n not in VLLM_SHAPES]
    if unknown:
        raise ValueError(f"{VLLM_SHAPES_ENV} names unknown shapes {unknown}; "
                         f"known: {sorted(VLLM_SHAPES)}")
    return names


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A freshly built (barely trained) tiny Qwen2 folder: real tokenizer, real weights."""
    from launch.build_model import TinyModelSpec, build

    return build(TinyModelSpec(**QUICK_SPEC_KW), tmp_path_factory.mktemp("tiny-model"))


def sane_steps(rows: list[dict], steps: int, max_new_tokens: int) -> list[dict]:
    """The per-step rows of a run's metrics.jsonl, each checked for sane values."""
    out = [r for r in rows if "critic/score/mean" in r]
    assert [r["step"] for r in out] == list(range(1, steps + 1))
    for i, r in enumerate(out):
        assert 0.0 <= r["critic/score/mean"] <= 1.0
        assert 1 <= r["response_length/mean"] <= max_new_tokens
        assert r["tau/min"] > 0 and r["tau/max"] < 10
        # the invariant across the whole system, weight syncs included: where the learner's
        # theta is the one that sampled the batch (staleness 0, or only phi updates since), its
        # log-prob of each sampled token (recorded tau) equals the engine's
        stale = int(r.get("rollout/staleness", 0))
        if not any("actor/pg_loss" in q for q in out[i - stale:i]):
            assert r.get("actor/rollout_logp_diff_max", 0.0) < 1e-3, r["step"]
    return out


def tensors_writer(weights: dict):
    """A ``write_weights`` for ``launch.model_export.write_model_folder`` from in-memory tensors
    (theta: Hugging Face names, the head: ``temperature_head.*``), in the layout the learners
    write (``learner.checkpoint.write_weights``: shards with an index, the head's own file); a
    tensor sharing storage with an earlier one (a tied LM head) is left out, as the learners'
    named parameters leave it out."""
    import json

    from safetensors.torch import save_file

    from rollout.vllm_overlay import HEAD_PREFIX, INDEX_FILE, save_head

    def write(folder):
        theta, seen = {}, set()
        for k, v in weights.items():
            if not k.startswith(HEAD_PREFIX) and v.untyped_storage().data_ptr() not in seen:
                seen.add(v.untyped_storage().data_ptr())
                theta[k] = v.detach().contiguous()
        name = "model-00001-of-00001.safetensors"
        save_file(theta, str(folder / name), metadata={"format": "pt"})
        (folder / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": {
            k: name for k in theta}}))
        head = {k[len(HEAD_PREFIX):]: v for k, v in weights.items() if k.startswith(HEAD_PREFIX)}
        if head:
            save_head(folder, head)

    return write
