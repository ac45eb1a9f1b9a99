"""A strategy from outside the project: registered in ``meta.registry.STRATEGIES`` by this test,
it runs through the config layer, the transformers engine, one learner phi step and the vLLM
engine (in-process) with no other package told about it: they read its capabilities
(``learns_head``, ``head``, ``candidates``, ``temperature_modes``), never its name.

``GeometricTau`` takes IntroLLM's action (gate c ~ Bernoulli, z ~ Beta from a ``TemperatureHead``)
but maps it geometrically, tau = tau_min (tau_max / tau_min)^z, with its own ``select``, so a
record made by IntroLLM's code (the linear map) fails the checks below.
"""

from __future__ import annotations

import copy

import pytest
import torch

from meta.base import RowContext, TempDecision, TemperatureStrategy
from meta.introllm import IntroLLM, TemperatureHead
from meta.registry import STRATEGIES, strategy_from_spec

NAME = "test-geometric-tau"
TAU_MIN, TAU_MAX = 0.4, 2.0


class GeometricTau(TemperatureStrategy):
    """Per-token tau = tau_min (tau_max / tau_min)^z where the head's gate draws, else kept."""

    name = NAME
    per_token = True
    needs_hidden = True
    learns_head = True

    def __init__(self, hidden_size: int, tau_min: float = TAU_MIN, tau_max: float = TAU_MAX,
                 tau_init: float = 1.0):
        self.tau_min, self.tau_max, self.tau_init = float(tau_min), float(tau_max), float(tau_init)
        self.head = TemperatureHead(hidden_size, gate_init_prob=0.3, beta_init=3.0)

    def temperature_at(self, step: int) -> float:
        return self.tau_init

    def tau_from_z(self, z: torch.Tensor) -> torch.Tensor:
        return self.tau_min * (self.tau_max / self.tau_min) ** z

    @torch.inference_mode()
    def select(self, ctx: RowContext) -> TempDecision:
        gate_logit, shapes = self.head.gate_and_shapes(ctx.hidden)  # (N,), (N, 2)
        alpha, beta = shapes[:, 0], shapes[:, 1]
        forced = ctx.positions == 0
        gate = torch.bernoulli(torch.sigmoid(gate_logit), generator=ctx.generator)
        gate = gate.masked_fill_(forced, 1.0)
        z = torch._sample_dirichlet(shapes, generator=ctx.generator)[:, 0]  # Beta(alpha, beta)
        logp = self.head.log_prob_from_params(gate_logit, alpha, beta, gate, z, forced)
        on = gate > 0.5
        z = z.masked_fill_(~on, 0.0)
        tau = torch.where(on, self.tau_from_z(z), ctx.prev_tau.to(z.dtype))
        f32 = torch.float32
        return TempDecision(tau=tau.to(f32), gate=gate.to(f32), z=z.to(f32),
                            logp_phi=logp.to(f32))


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The plugin in the registry for this module's tests only."""
    assert NAME not in STRATEGIES
    STRATEGIES[NAME] = GeometricTau
    yield
    del STRATEGIES[NAME]


@pytest.fixture(scope="module")
def hidden_size(tiny_model_dir):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_model_dir).hidden_size


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir, hidden_size):
    from rollout.hf_engine import HFEngine

    torch.manual_seed(0)
    return HFEngine.from_path(tiny_model_dir, GeometricTau(hidden_size), max_new_tokens=16,
                              batch_size=16)


def requests(tokenizer, num_prompts=4, group=4):
    from tests.test_rollout_hf_on_cpu import make_requests

    return make_requests(tokenizer, num_prompts=num_prompts, group=group)


def check_records(batch, strategy, hidden) -> None:
    """The per-token records are the plugin's: its tau map and its head's log pi_phi."""
    mask = batch.response_mask
    forced = torch.zeros_like(mask)
    forced[:, 0] = True
    with torch.no_grad():
        logp_phi = strategy.head.log_prob(hidden, batch.gate, batch.z, forced)
    assert (logp_phi - batch.logp_phi)[mask].abs().max() < 1e-4
    drawn = (batch.gate == 1) & mask
    kept = (batch.gate == 0) & mask
    assert drawn[:, 1:].any() and kept.any()  # both branches were exercised
    torch.testing.assert_close(batch.tau[drawn], strategy.tau_from_z(batch.z[drawn]),
                               atol=1e-5, rtol=1e-5)
    linear = TAU_MIN + batch.z[drawn] * (TAU_MAX - TAU_MIN)  # IntroLLM's map: not this one
    assert (batch.tau[drawn] - linear).abs().max() > 0.05
    prev = torch.cat([batch.tau[:, :1], batch.tau[:, :-1]], 1)
    kept[:, 0] = False
    assert torch.equal(batch.tau[kept], prev[kept])


# --------------------------------------------------------------------------- without a model


def _run_config(meta: dict):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from launch.config import validate
    from tests.test_config_on_cpu import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="config"), resolve=True)
    cfg["meta"] = meta
    return validate(cfg)


def test_the_config_layer_takes_phi_settings_from_the_capability(tmp_path):
    from launch.checks import ConfigError
    from launch.config import build_strategy
    from launch.trainer import Trainer

    run = _run_config({"name": NAME, "tau_max": 1.8, "phase_len": 3, "phi_first": True})
    assert run.meta.args == {"tau_max": 1.8}  # hidden_size is derived, not configured
    assert run.meta.phi is not None and run.meta.phi.phase_len == 3
    s = build_strategy(run, hidden_size=16)
    assert isinstance(s, GeometricTau) and s.tau_max == 1.8 and s.head.fc1.in_features == 16
    trainer = Trainer(run, str(tmp_path), "unused", [], [])
    assert [trainer.phase(t) for t in range(6)] == ["phi"] * 3 + ["theta"] * 3
    with pytest.raises(ConfigError, match="phase_len"):  # no head: no phi settings
        _run_config({"name": "fixed", "phase_len": 3})
    assert Trainer(_run_config({"name": "fixed"}), str(tmp_path), "unused", [], []).phase(0) \
        == "theta"


def test_spec_round_trip_meta_worker_and_temperature_modes():
    from meta.worker import MetaWorker
    from rollout.worker import RolloutWorker

    torch.manual_seed(0)
    s = GeometricTau(16, tau_max=1.7)
    again = strategy_from_spec(s.spec())  # what vLLM's workers do
    assert type(again) is GeometricTau and again.tau_max == 1.7
    again.load_state_dict(s.state_dict())  # a head's state by default: its weights
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 s.state_dict().values()))
    meta = MetaWorker(s)
    assert meta.candidates is None and meta.update({"loglik": torch.zeros(2, 3)}) == {}
    assert MetaWorker(strategy_from_spec({"name": "tampo", "kwargs": {"candidates": [0.7, 1.1]}})
                      ).candidates == [0.7, 1.1]

    class Engine:
        def __init__(self, strategy):
            self.strategy, self.bound = strategy, 0

        def set_strategy(self, strategy):
            self.bound += 1

    worker = RolloutWorker.__new__(RolloutWorker)  # its engine only
    for strategy, changes in ((s, False), (IntroLLM(16), True)):
        worker.engine, worker.strategy = Engine(strategy), strategy
        worker.train_mode = "sample"
        worker.set_decoding("mean")
        assert worker.engine.bound == int(changes)
        assert strategy.spec()["kwargs"].get("temperature_mode") == ("mean" if changes else None)
    with pytest.raises(ValueError, match="no temperature mode"):
        s.set_temperature_mode("mean")


# --------------------------------------------------------------------------- engines, learner


@torch.no_grad()
def recompute(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced (logits (B, T, V), final post-norm hidden (B, T, d)) at the positions that
    produced each response token, with the engines' position ids."""
    ids, mask = batch.sequences()
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask.long(), position_ids=pos,
                output_hidden_states=True)
    lp, t = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    return out.logits[:, lp - 1: lp - 1 + t], out.hidden_states[-1][:, lp - 1: lp - 1 + t]


def test_transformers_engine_records_the_plugin_decisions(hf_engine):
    batch = hf_engine.generate(requests(hf_engine.tokenizer), seed=1)
    check_records(batch, hf_engine.strategy, recompute(hf_engine.model, batch)[1])


def test_one_learner_phi_step_trains_a_copy_of_the_plugin_head(tiny_model_dir, hf_engine):
    from learner.config import LearnerConfig, PhiTrainingConfig
    from learner.core_algos import compute_grpo_advantages
    from learner.worker import LearnerWorker

    batch = hf_engine.generate(requests(hf_engine.tokenizer), seed=2)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 4)
    batch.advantages = compute_grpo_advantages(batch.rewards, batch.group_index)
    head = hf_engine.strategy.head
    before = copy.deepcopy(head.state_dict())
    worker = LearnerWorker(str(tiny_model_dir), LearnerConfig(lr=1e-3, micro_batch_size=4),
                           PhiTrainingConfig(lr=1e-2), head=head, total_steps=10)
    theta0 = {k: v.clone() for k, v in worker.get_weights("theta").items()}
    stats = worker.update_phi(batch)
    # the learner's log pi_phi of the recorded actions is the behaviour's: the same head
    assert abs(stats["phi/ppo_kl"]) < 1e-5 and abs(stats["phi/ratio_max"] - 1) < 1e-3
    assert stats["phi/skipped_nonfinite"] == 0
    phi = worker.get_weights("phi")
    moved = max((phi[f"temperature_head.{k}"] - v).abs().max().item() for k, v in before.items())
    assert moved > 1e-4
    assert all(torch.equal(v, before[k]) for k, v in head.state_dict().items())  # a copy
    assert all(torch.equal(v, theta0[k]) for k, v in worker.get_weights("theta").items())
    engine = copy.copy(hf_engine)
    engine.strategy = copy.deepcopy(hf_engine.strategy)
    engine.load_weights(phi)  # the sync: into the plugin's head, by the default state dict
    assert all(torch.equal(v, phi[f"temperature_head.{k}"])
               for k, v in engine.strategy.head.state_dict().items())


@pytest.mark.slow
def test_vllm_engine_in_process_records_the_plugin_decisions(tiny_model_dir, hidden_size):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollout.vllm_engine import VLLMEngine

    torch.manual_seed(3)
    strategy = GeometricTau(hidden_size)
    engine = VLLMEngine(str(tiny_model_dir), strategy, seed=0, engine_core="inproc",
                        runner="v1", max_model_len=512, max_new_tokens=16, max_num_seqs=8)
    try:
        got = engine.head_state_dict()  # the engine samples with the plugin's own head
        assert all(torch.equal(got[k], v) for k, v in strategy.head.state_dict().items())
        batch = engine.generate(requests(AutoTokenizer.from_pretrained(tiny_model_dir)),
                                seed=4)
    finally:
        engine.close()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    logits, hidden = recompute(model, batch)
    check_records(batch, strategy, hidden)
    want = torch.log_softmax(logits / batch.tau.clamp_min(1e-6)[..., None], -1)
    want = want.gather(-1, batch.response_ids[..., None])[..., 0]
    m = batch.response_mask
    assert (want - batch.logp_rollout)[m].abs().max() < 1e-4  # sampled at the plugin's tau
