"""Shared fixtures: a tiny model built in seconds (quality irrelevant), and thread settings."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-core machines: more threads is slower

QUICK_SPEC_KW = dict(sft_examples=1000, sft_steps=3, batch_size=8, hidden_size=64,
                     intermediate_size=128, num_layers=1, num_heads=2, num_kv_heads=1)
# head_dim 32: the smallest head size vLLM's CPU attention accepts


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A freshly built (barely trained) tiny Qwen2 folder: real tokenizer, real weights."""
    from launch.build_model import TinyModelSpec, build

    return build(TinyModelSpec(**QUICK_SPEC_KW), tmp_path_factory.mktemp("tiny-model"))
