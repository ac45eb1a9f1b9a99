"""Serving mode's parts without a server: the serving row source (keys, greedy, refusals), the
binding a model takes at its first compute_logits, a serving runtime's bounded records, and the
settings ``python -m launch.serve`` gives vLLM's server. The server itself: tests/test_serve.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

import meta
import rollout.vllm_worker
from launch.model_export import POLICY_FILE, policy_record
from launch.serve import SAMPLING_DEFAULTS, configure, load_strategy
from meta.base import RowContext, TempDecision, TemperatureStrategy
from rollout.vllm_model import TempoRuntime, tempo_model_class
from rollout.vllm_rows import KEY
from rollout.vllm_serving import (
    POLICY_ENV,
    ServingV1RowTracker,
    ServingV2RowSource,
    policy_env,
    row_source_fqcn,
)

HIDDEN = 8


def config(max_num_seqs=2):
    return SimpleNamespace(
        model_config=SimpleNamespace(hf_text_config=SimpleNamespace(hidden_size=HIDDEN)),
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs))


def add(tracker, size, added):
    tracker.update_state(BatchUpdate(batch_size=size, removed=[], added=list(added), moved=[]))


@pytest.fixture
def serving(monkeypatch):
    monkeypatch.setenv(POLICY_ENV, policy_env(meta.build_strategy("fixed").spec(), 0, 0.8))
    monkeypatch.setattr(rollout.vllm_worker, "_tp_group", lambda: None)  # no vLLM distributed


def test_every_request_gets_its_own_key_and_keeps_it_when_it_comes_back(serving):
    t = ServingV1RowTracker(config(), torch.device("cpu"), False)
    shared = {"client": 1}  # copies of one request (n > 1) may share the client's dict
    a, b = SamplingParams(extra_args=shared), SamplingParams(extra_args=shared)
    g = SamplingParams(temperature=0.0, extra_args={KEY: "client-chosen"})
    add(t, 3, [(0, a, [1], []), (1, b, [1], []), (2, g, [1], [])])
    rows = t.rows(3)
    keys = [p.extra_args[KEY] for p in (a, b, g)]
    assert len(set(keys)) == 3 and "client-chosen" not in keys
    assert rows.slot.tolist() == [t.slots.get(k) for k in keys]  # a record slot each
    assert rows.base_tau.tolist() == pytest.approx([0.8] * 3)
    assert rows.greedy.tolist() == [False, False, True]
    assert shared == {"client": 1} and a.extra_args["client"] == 1
    add(t, 3, [(0, a, [1], [7, 7])])  # a, back after preemption (the worker's same object)
    assert a.extra_args[KEY] == keys[0]
    assert t.rows(3).slot[0] == t.slots.get(keys[0]) and t.rows(3).position[0] == 2


def test_prompt_logprobs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="prompt_logprobs=0 .*without echo/prompt_logprobs"):
        ServingV1RowTracker.validate_params(SamplingParams(prompt_logprobs=0))
    ServingV1RowTracker.validate_params(SamplingParams(logprobs=1, top_p=0.5, top_k=3))
    with pytest.raises(ValueError, match=r"extra_args \[.*\] are set by the server"):
        ServingV1RowTracker.validate_params(SamplingParams(extra_args={KEY: "serve1-0"}))


class FakeCausalLM(torch.nn.Module):
    """What Tempo<Arch> needs of a vLLM class: compute_logits (here: the hidden state)."""

    def __init__(self, *, vllm_config, prefix=""):
        super().__init__()

    def compute_logits(self, hidden):
        return hidden.clone()


def test_the_model_takes_the_binding_its_row_source_offered(serving):
    cfg = config()
    model = tempo_model_class(FakeCausalLM)(vllm_config=cfg)
    hidden = torch.ones(1, HIDDEN)
    assert torch.equal(model.compute_logits(hidden), hidden)  # nothing offered: passes through
    assert model.tempo_runtime is None
    t = ServingV1RowTracker(cfg, torch.device("cpu"), False)
    other = tempo_model_class(FakeCausalLM)(vllm_config=config())  # another engine's model
    add(t, 1, [(0, SamplingParams(), [1], [])])
    other.compute_logits(hidden)
    assert other.tempo_runtime is None
    got = model.compute_logits(hidden)  # binds, then divides by the fixed strategy's base τ
    runtime = model.tempo_runtime
    assert runtime.rows is t and runtime.keep_requests == 4096
    torch.testing.assert_close(got, hidden / 0.8)


def test_model_runner_v2_binds_the_same_way_and_divides_in_apply(serving):
    import numpy as np

    cfg = config()
    lens = SimpleNamespace(prompt_len=SimpleNamespace(np=np.array([4])),
                           prefill_len=SimpleNamespace(np=np.array([4])))
    src = ServingV2RowSource(cfg, lens)
    model = tempo_model_class(FakeCausalLM)(vllm_config=cfg)
    assert src.add_request(0, SamplingParams()) is True
    logits = model.compute_logits(torch.ones(1, HIDDEN))  # binds; V2 only stashes h here
    assert src.runtime is model.tempo_runtime and torch.equal(logits, torch.ones(1, HIDDEN))
    ctx = SimpleNamespace(expanded_idx_mapping=torch.tensor([0]), idx_mapping_np=np.array([0]),
                          pos=torch.tensor([3]))
    torch.testing.assert_close(src.apply(logits, ctx), torch.ones(1, HIDDEN) / 0.8)


class PrevPlusOne(TemperatureStrategy):
    name = "prevplus"
    per_token = True

    def select(self, ctx: RowContext) -> TempDecision:
        return TempDecision(tau=ctx.prev_tau + 0.1)


def test_a_serving_runtime_keeps_two_records_of_at_most_its_latest_requests(serving):
    t = ServingV1RowTracker(config(), torch.device("cpu"), False)
    rt = TempoRuntime(t, PrevPlusOne(), keep_requests=3)
    a, out_a = SamplingParams(), []
    add(t, 1, [(0, a, [1], out_a)])
    for _ in range(4):  # request a: positions 0..3; position 3 twice (a partial prefill chunk)
        rt.on_compute_logits(None, torch.ones(1, 2))
        out_a.append(1)
    del out_a[-1]
    rt.on_compute_logits(None, torch.ones(1, 2))
    assert rt.records.shape[1:] == (2, 4)  # (R, 2 positions, tau/gate/z/logp_phi)
    row = rt.records[t.slots.get(a.extra_args[KEY])]
    assert sorted(row[:, 0].tolist()) == pytest.approx([0.8 + 0.3, 0.8 + 0.4])  # positions 2, 3
    for _ in range(100):  # many more requests, each leaving: memory stays bounded
        t.update_state(BatchUpdate(batch_size=1, removed=[0], added=[(0, SamplingParams(), [1],
                                                                      [])], moved=[]))
        rt.on_compute_logits(None, torch.ones(1, 2))
    assert t.slots.size <= 4 and rt.records.shape[0] == 64  # 3 kept + the scratch slot
    t.update_state(BatchUpdate(batch_size=1, removed=[0], added=[(0, a, [1], [1, 1, 1, 1])],
                               moved=[]))
    rt.on_compute_logits(None, torch.ones(1, 2))  # a was recycled: tau_{t-1} is the base, said so
    assert rt.collect([], 0)["anomalies"] == {"missing_prev": 1}


def parsed(*extra):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()).parse_args(["m", *extra])


def test_serving_settings_on_vllms_arguments():
    args = parsed("--override-generation-config", '{"top_p": 0.9}')
    configure(args, use_v2=False)
    assert args.logits_processors == [row_source_fqcn(False)]
    assert args.logprobs_mode == "processed_logprobs"
    assert args.override_generation_config == {**SAMPLING_DEFAULTS, "top_p": 0.9}
    assert row_source_fqcn(True) == "rollout.vllm_serving:ServingV2RowSource"
    with pytest.raises(SystemExit, match="--logprobs-mode raw_logits is not served"):
        configure(parsed("--logprobs-mode", "raw_logits"), use_v2=False)


def test_only_an_exported_folder_with_a_head_is_served(tmp_path):
    with pytest.raises(SystemExit, match="no temperature_policy.json.*vllm serve"):
        load_strategy(tmp_path)
    (tmp_path / POLICY_FILE).write_text(json.dumps(
        policy_record(meta.build_strategy("tampo"), steps=3, checkpoint=None)))
    with pytest.raises(SystemExit, match="tampo temperature strategy.*--override-generation-"
                                         "config '{\"temperature\": "):
        load_strategy(tmp_path)
