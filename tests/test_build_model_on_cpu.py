"""The embedded model builder: tokenizer round-trip, HF folder, caching (fast, tiny budgets)."""

from __future__ import annotations

import json

import pytest

from launch.build_model import TinyModelSpec, build, cached_model_path, ensure_tiny_model
from tests.conftest import QUICK_SPEC_KW

QUICK = TinyModelSpec(**QUICK_SPEC_KW)


@pytest.fixture(scope="module")
def quick_model(tiny_model_dir):
    return tiny_model_dir


def test_folder_is_a_complete_hf_model(quick_model):
    names = {p.name for p in quick_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "vocab.json", "merges.txt", "tempo_build.json"} <= names
    config = json.loads((quick_model / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 1


def test_tokenizer_loads_as_qwen2_and_round_trips_exactly(quick_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(quick_model)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    text = "Use 3 5  2 to make 16.\n3+5=8.   8*2=16. \\boxed{(3+5)*2} ünïcode"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text  # spaces survive the forced Qwen2 pre-tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "Compute 1+2."}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|im_start|>user\nCompute 1+2.<|im_end|>\n<|im_start|>assistant\n"
    # special tokens are single ids
    assert len(tok("<|im_start|><|im_end|>")["input_ids"]) == 2


def test_model_loads_and_generates(quick_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(quick_model)
    model = AutoModelForCausalLM.from_pretrained(quick_model)
    enc = tok(["Compute 1+2."], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_cache_reuses_the_built_model_and_key_tracks_spec(tmp_path, monkeypatch):
    calls = []
    import launch.build_model as bm

    real_build = bm.build
    monkeypatch.setattr(bm, "build", lambda spec, out: calls.append(out) or real_build(spec, out))
    first = ensure_tiny_model(QUICK, cache_dir=str(tmp_path))
    second = ensure_tiny_model(QUICK, cache_dir=str(tmp_path))
    assert first == second == cached_model_path(QUICK, str(tmp_path)) and len(calls) == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no half-built leftovers
    other = TinyModelSpec(**{**QUICK.__dict__, "sft_steps": 4})
    assert cached_model_path(other, str(tmp_path)) != first


def test_interrupted_build_leaves_nothing_that_looks_built(tmp_path, monkeypatch):
    import launch.build_model as bm

    def boom(spec, out):
        (out / "config.json").write_text("{}")  # a partial write...
        raise KeyboardInterrupt  # ...then the user hits Ctrl-C

    monkeypatch.setattr(bm, "build", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_tiny_model(QUICK, cache_dir=str(tmp_path))
    assert not cached_model_path(QUICK, str(tmp_path)).exists()
    assert list(tmp_path.iterdir()) == []


def test_pretraining_lowers_the_loss(tmp_path):
    spec = TinyModelSpec(**{**QUICK.__dict__, "sft_steps": 40, "lr": 3e-3, "warmup_steps": 5})
    out = build(spec, tmp_path / "m")
    meta = json.loads((out / "tempo_build.json").read_text())
    # the first loss is about ln(vocab) = ln(~300) = 5.7 for an untrained model
    assert meta["first_loss"] > 5.0 and meta["final_loss"] < 0.75 * meta["first_loss"]


def test_sft_steps_zero_builds_a_random_weight_model(tmp_path):
    """sft_steps=0: no pre-training (a random model of any size, for benchmarks), a loadable
    folder."""
    from transformers import AutoModelForCausalLM

    spec = TinyModelSpec(**{**QUICK.__dict__, "sft_steps": 0, "hidden_size": 64})
    out = build(spec, tmp_path / "m")
    meta = json.loads((out / "tempo_build.json").read_text())
    assert meta["first_loss"] is None and meta["final_loss"] is None
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 64
