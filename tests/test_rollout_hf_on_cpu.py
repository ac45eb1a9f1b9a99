"""The transformers engine: per-token temperature invariant, records, and the IntroLLM head."""

from __future__ import annotations

import pytest
import torch

from data.prompts import render_prompt
from data.synthetic import generate
from learner.logprobs import token_logprobs
from meta import build_strategy
from rollout.base import RolloutRequest
from rollout.hf_engine import HFEngine


def make_requests(tok, num_prompts=4, group=3, base_tau=1.0):
    probs = generate(num_prompts, "eval", seed=0)
    return [RolloutRequest(tok(render_prompt(p, tok))["input_ids"], g, base_tau, p.id, p.task,
                           p.answer, p.level, p.meta)
            for g, p in enumerate(probs) for _ in range(group)]


def strategy(name, hidden_size):
    kw = {"introllm": dict(hidden_size=hidden_size), "linear": dict(total_steps=10),
          "staged": dict(boundaries=(2, 4)), "fixed": dict(temperature=0.7)}.get(name, {})
    return build_strategy(name, **kw)


def recompute(engine, batch):
    """Teacher-forced forward of the recorded sequences: (logits (B,T,V), hidden (B,T,d))."""
    ids, mask = batch.sequences()
    with torch.no_grad():
        out = engine.model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    lp, t = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    return out.logits[:, lp - 1 : lp - 1 + t].float(), out.hidden_states[-1][:, lp - 1 : lp - 1 + t]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from transformers import AutoConfig

    d = AutoConfig.from_pretrained(tiny_model_dir).hidden_size
    return HFEngine.from_path(tiny_model_dir, strategy("introllm", d), max_new_tokens=24,
                              batch_size=8)


@pytest.mark.parametrize("name", ["fixed", "linear", "staged", "ead", "edt", "tampo", "introllm"])
def test_logprobs_are_those_of_the_recorded_temperature(engine, name):
    engine.strategy = strategy(name, engine.model.config.hidden_size)
    reqs = make_requests(engine.tokenizer, base_tau=engine.strategy.plan(3, 1)[0].item())
    batch = engine.generate(reqs, step=3, seed=0)
    mask = batch.response_mask
    assert (mask.sum(-1) >= 1).all()
    logits, _ = recompute(engine, batch)
    tempered = token_logprobs(logits, batch.response_ids, batch.tau, response_mask=mask)
    assert (tempered - batch.logp_rollout)[mask].abs().max() < 1e-4
    untempered = token_logprobs(logits, batch.response_ids, torch.ones_like(batch.tau),
                                response_mask=mask)
    if (batch.tau[mask] - 1).abs().max() > 0.05:  # the check has teeth wherever tau != 1
        assert (untempered - batch.logp_rollout)[mask].abs().max() > 1e-2
    if name == "introllm":
        assert batch.gate is not None and batch.logp_phi is not None
    else:
        assert batch.gate is None


def test_introllm_records_match_the_head_recomputed_from_hidden_states(engine):
    engine.strategy = strategy("introllm", engine.model.config.hidden_size)
    batch = engine.generate(make_requests(engine.tokenizer), step=0, seed=1)
    mask = batch.response_mask
    _, hidden = recompute(engine, batch)
    forced = torch.zeros_like(mask)
    forced[:, 0] = True
    logp_phi = engine.strategy.log_prob(hidden, batch.gate, batch.z, forced)
    assert (logp_phi - batch.logp_phi)[mask].abs().max() < 1e-4
    assert (batch.gate[:, 0] == 1).all()  # the head decides the first temperature
    tau = batch.tau
    kept = (batch.gate == 0) & mask
    kept[:, 0] = False
    prev = torch.cat([tau[:, :1], tau[:, :-1]], 1)
    assert torch.equal(tau[kept], prev[kept])  # gate 0 keeps the previous temperature
    drawn = (batch.gate == 1) & mask
    assert ((tau[drawn] >= 0.5) & (tau[drawn] <= 1.5)).all()
    assert kept.any() and drawn[:, 1:].any()  # both branches were exercised


def test_weight_sync_of_the_gate_bias_freezes_then_releases_the_temperature(engine):
    engine.strategy = strategy("introllm", engine.model.config.hidden_size)
    head = {f"temperature_head.{k}": v.clone() for k, v in engine.strategy.state_dict().items()}
    frozen = dict(head)
    frozen["temperature_head.fc2.bias"] = head["temperature_head.fc2.bias"].clone()
    frozen["temperature_head.fc2.bias"][0] = -30.0  # sigma(u_c) ~ 1e-13: never update
    seconds = engine.load_weights(frozen)
    assert isinstance(seconds, float) and 0 <= seconds < 5  # the sync time, as vLLM's engine
    batch = engine.generate(make_requests(engine.tokenizer), seed=2)
    mask = batch.response_mask.clone()
    mask[:, 0] = False
    assert (batch.gate[mask] == 0).all()
    assert torch.equal(batch.tau[mask], batch.tau[:, :1].expand_as(batch.tau)[mask])
    engine.load_weights(head)
    batch = engine.generate(make_requests(engine.tokenizer), seed=2)
    assert (batch.gate[:, 1:][batch.response_mask[:, 1:]] == 1).any()


def test_theta_weight_sync_changes_outputs_and_restoring_returns_them(engine):
    engine.strategy = strategy("fixed", engine.model.config.hidden_size)
    reqs = make_requests(engine.tokenizer)
    before = engine.generate(reqs, seed=3)
    original = {k: v.clone() for k, v in engine.model.state_dict().items()}
    engine.load_weights({"model.norm.weight": original["model.norm.weight"] * 3})
    changed = engine.generate(reqs, seed=3)
    engine.load_weights(original)
    after = engine.generate(reqs, seed=3)
    assert not torch.equal(before.logp_rollout, changed.logp_rollout) or \
        not torch.equal(before.response_ids, changed.response_ids)
    assert torch.equal(before.response_ids, after.response_ids)
    assert torch.allclose(before.logp_rollout, after.logp_rollout)


def test_finish_reasons_and_determinism(engine):
    engine.strategy = strategy("fixed", engine.model.config.hidden_size)
    reqs = make_requests(engine.tokenizer, num_prompts=6, group=2)
    a = engine.generate(reqs, seed=4)
    b = engine.generate(reqs, seed=4)
    assert torch.equal(a.response_ids, b.response_ids)
    eos = set(engine.eos_ids)
    for i, reason in enumerate(a.finish_reasons):
        n = int(a.response_lengths[i])
        last = int(a.response_ids[i, n - 1])
        assert (reason == "stop") == (last in eos)
        assert reason == "stop" or n == engine.max_new_tokens
    greedy = engine.generate(reqs, seed=5, greedy=True)
    again = engine.generate(reqs, seed=6, greedy=True)
    assert torch.equal(greedy.response_ids, again.response_ids)
