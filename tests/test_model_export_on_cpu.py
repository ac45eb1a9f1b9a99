"""The exported model folder (launch.model_export): theta for transformers, the temperature policy
beside it, and the way back into a strategy."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import meta
from launch.model_export import (
    POLICY_FILE,
    apply_policy,
    policy_record,
    read_policy,
    write_model_folder,
)
from tests.conftest import tensors_writer


def _write(folder, record):
    folder.mkdir(exist_ok=True)
    (folder / POLICY_FILE).write_text(json.dumps(record))


def test_tampo_policy_round_trips_through_the_json(tmp_path):
    trained = meta.build_strategy("tampo")
    k = len(trained.candidates)
    trained.ema = torch.linspace(-1, 1, k, dtype=torch.float64)
    trained.pi = torch.softmax(trained.ema, 0)
    trained.num_updates = 7
    record = policy_record(trained, steps=9, checkpoint=None)
    assert record["summary"]["temperature"] == pytest.approx(
        float((trained.pi * trained.candidates).sum()))
    _write(tmp_path, record)
    fresh = meta.build_strategy("tampo")
    assert apply_policy(tmp_path, fresh)["trained_steps"] == 9
    assert torch.equal(fresh.pi, trained.pi) and torch.equal(fresh.ema, trained.ema)
    assert fresh.num_updates == 7


def test_a_policy_of_another_strategy_is_not_applied_and_says_so(tmp_path, caplog):
    _write(tmp_path, policy_record(meta.build_strategy("tampo"), steps=3, checkpoint=None))
    fixed = meta.build_strategy("fixed")
    with caplog.at_level(logging.WARNING, logger="launch.model_export"):
        assert apply_policy(tmp_path, fixed) is None
    assert "exported with the tampo temperature strategy; this run uses fixed" in caplog.text
    assert apply_policy(tmp_path / "nothing", fixed) is None  # a plain folder: nothing to do
    _write(tmp_path, {"schema": 99})
    with pytest.raises(ValueError, match="has schema 99.*export the checkpoint again"):
        read_policy(tmp_path)


def test_an_introllm_folder_loads_in_transformers_and_brings_its_head_back(tmp_path,
                                                                         tiny_model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = AutoConfig.from_pretrained(tiny_model_dir).hidden_size
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    weights = {k: v + 0.01 for k, v in base.state_dict().items()}  # a "trained" theta
    torch.manual_seed(1)
    trained = meta.build_strategy("introllm", hidden_size=d)
    weights.update({f"temperature_head.{k}": v for k, v in trained.head.state_dict().items()})
    out = write_model_folder(tmp_path / "model", tiny_model_dir, tensors_writer(weights),
                             meta.build_strategy("introllm", hidden_size=d), steps=4)
    assert not list(tmp_path.glob(".model.tmp*"))  # written under a temporary name, renamed
    loaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.equal(loaded[k], weights[k]) for k in loaded)
    assert (out / "tokenizer_config.json").exists() and (out / "generation_config.json").exists()
    torch.manual_seed(2)
    fresh = meta.build_strategy("introllm", hidden_size=d)
    record = apply_policy(out, fresh)
    assert record["summary"] == {"tau_min": 0.5, "tau_max": 1.5, "tau_init": 1.0, "eps": 1e-3,
                                 "temperature_mode": "sample"}
    assert all(torch.equal(a, b) for a, b in zip(fresh.head.state_dict().values(),
                                                  trained.head.state_dict().values()))


def test_an_output_folder_that_would_delete_something_else_is_refused(tmp_path):
    from launch.model_export import check_out

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step_000004"
    ckpt.mkdir(parents=True)
    with pytest.raises(ValueError, match="is or holds .*step_000004"):
        check_out(run, [ckpt])  # the run folder itself
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="exists and is not an exported model folder"):
        check_out(tmp_path / "notes", [ckpt])
    check_out(run / "final_model", [ckpt])  # new: fine
    _write(tmp_path / "old_export", {"schema": 1})
    check_out(tmp_path / "old_export", [ckpt])  # an earlier export: replaced
