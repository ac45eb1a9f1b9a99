"""LearnerWorker on real DeepSpeed (CPU, gloo) with the tiny model and HFEngine-made batches.

Adam's first step is nearly invariant to the gradient's scale (update ~ lr * g / |g|), so the
equivalence tests compare the pre-clip gradient norm as well as the parameters: a wrong loss
scale (forgotten x world_size, a per-micro-batch denominator) shows in the norm.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from launch.config import LearnerConfig, PhiTrainingConfig
from learner.batching import informative_rows, make_micro
from learner.checkpoint import sha256_of
from learner.core_algos import compute_grpo_advantages
from learner.worker import LearnerWorker
from rollout.hf_engine import HFEngine
from tests.test_rollout_hf_on_cpu import make_requests, strategy

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # ZeRO-3's gloo collectives

CANDIDATES = [0.6, 0.8, 1.0, 1.2, 1.5]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    """The transformers engine with a seeded IntroLLM head (the head every worker starts from)."""
    from transformers import AutoConfig

    torch.manual_seed(0)
    d = AutoConfig.from_pretrained(tiny_model_dir).hidden_size
    return HFEngine.from_path(tiny_model_dir, strategy("introllm", d), max_new_tokens=16,
                              batch_size=16)


def make_batch(engine, name="introllm", seed=0):
    """4 prompts x 4 responses with hand-set mixed rewards (2 right, 2 wrong per group)."""
    introllm = engine.strategy
    if name != "introllm":
        engine.strategy = strategy(name, engine.model.config.hidden_size)
    try:
        batch = engine.generate(make_requests(engine.tokenizer, num_prompts=4, group=4), seed=seed)
    finally:
        engine.strategy = introllm
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 4)
    batch.advantages = compute_grpo_advantages(batch.rewards, batch.group_index)
    return batch


@pytest.fixture(scope="module")
def batch(engine):
    return make_batch(engine)


def make_worker(model_dir, engine, phi_lr=1e-2, dtype="float32", **cfg):
    cfg = {"lr": 1e-3, "micro_batch_size": 4, **cfg}
    return LearnerWorker(str(model_dir), LearnerConfig(**cfg), PhiTrainingConfig(lr=phi_lr),
                         head=engine.strategy.head, total_steps=10, dtype=dtype)


def naive_logits(model, batch):
    """(B, T, V) response logits from one plain forward with the engine's position ids."""
    ids, mask = batch.sequences()
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    lp, t = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask.long(), position_ids=pos,
                    output_hidden_states=True)
    return out.logits[:, lp - 1: lp - 1 + t], out.hidden_states[-1][:, lp - 1: lp - 1 + t]


def params(worker, which="all"):
    return {k: v.clone() for k, v in worker.get_weights(which).items()}


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("name", ["introllm", "ead"])  # EDT's tau is flat on the untrained model
def test_old_logprobs_match_the_engine_and_loglik_is_the_naive_one(tiny_model_dir, engine, name):
    batch = make_batch(engine, name)
    mask = batch.response_mask
    assert batch.tau[mask].std() > 0.01  # tau varies per token, so the check has teeth
    w = make_worker(tiny_model_dir, engine, micro_batch_size=3, logprob_chunk=7)  # ragged chunks
    old = w.compute_old_logprobs(batch, CANDIDATES)
    B, T = batch.response_ids.shape
    assert old["old_logp"].shape == (B, T) and old["loglik"].shape == (B, len(CANDIDATES))
    assert (old["old_logp"] - batch.logp_rollout)[mask].abs().max() < 1e-4
    assert (old["old_logp"][~mask] == 0).all()
    logits, _ = naive_logits(engine.model, batch)  # (B, T, V)
    for k, temp in enumerate(CANDIDATES):
        lp = torch.log_softmax(logits / temp, -1).gather(-1, batch.response_ids[..., None])[..., 0]
        naive = (lp * mask).sum(-1) / mask.sum(-1)  # (B,) length-normalised l_k
        assert (old["loglik"][:, k] - naive).abs().max() < 1e-5
    p = torch.softmax(logits / batch.tau[..., None], -1)
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1)  # (B, T) tempered entropy
    assert (old["entropy"] - ent)[mask].abs().max() < 1e-4
    assert (old["entropy_untempered"] - old["entropy"])[mask].abs().max() > 1e-3


def test_theta_step_moves_the_grpo_objective_the_right_way(tiny_model_dir, engine, batch):
    w = make_worker(tiny_model_dir, engine)
    before = params(w, "theta")
    old = w.compute_old_logprobs(batch)
    stats = w.update_theta(batch, old)[0]
    for key in ("actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/grad_norm",
                "actor/lr", "actor/entropy", "actor/skipped_nonfinite"):
        assert key in stats and stats[key] == stats[key], key
    assert abs(stats["actor/ppo_kl"]) < 1e-6  # one mini-batch: the update's forward = the old pass
    assert stats["actor/skipped_nonfinite"] == 0 and stats["actor/optimizer_steps"] == 1
    assert max_diff(before, params(w, "theta")) > 0
    new = w.compute_old_logprobs(batch)["old_logp"]
    mask = batch.response_mask
    delta = ((new - old["old_logp"]) * mask).sum(-1) / mask.sum(-1)  # (B,) mean change per response
    pos, neg = batch.advantages > 0, batch.advantages < 0
    assert delta[pos].mean() > delta[neg].mean() + 1e-3


@pytest.mark.parametrize("loss_agg, extra", [
    ("token-mean", {}), ("seq-mean-token-mean", {}), ("seq-mean-token-sum-norm", {}),
    ("token-mean", {"kl_coef": 0.1, "entropy_coef": 0.01, "mini_batches": 2,
                    "skip_zero_adv": False}),
])
def test_micro_batching_equals_one_big_batch(tiny_model_dir, engine, batch, loss_agg, extra):
    results = []
    for mbs in (2, len(batch)):
        w = make_worker(tiny_model_dir, engine, micro_batch_size=mbs, loss_agg=loss_agg, **extra)
        stats = w.update_theta(batch, w.compute_old_logprobs(batch))[0]
        results.append((stats, params(w, "theta")))
    (s1, p1), (s2, p2) = results
    for key in ("actor/grad_norm", "actor/pg_loss", "actor/kl_loss", "actor/entropy_loss"):
        if key in s2 or key in s1:
            assert s1[key] == pytest.approx(s2[key], rel=1e-5, abs=1e-7), key
    if extra:
        assert s1["actor/kl_loss"] > 0 and s1["actor/entropy_loss"] > 0  # both terms were on
        assert s1["actor/optimizer_steps"] == 2
    assert max_diff(p1, p2) < 1e-4  # Adam's first step ~ lr * sign(g): see the 2-rank test


def test_phi_step_changes_only_the_head_and_favours_good_temperature_actions(
        tiny_model_dir, engine, batch):
    w = make_worker(tiny_model_dir, engine)
    theta0, phi0 = params(w, "theta"), params(w, "phi")
    stats = w.update_phi(batch)
    for key in ("phi/pg_loss", "phi/pg_clipfrac", "phi/ppo_kl", "phi/grad_norm",
                "phi/gate_entropy", "phi/beta_entropy"):
        assert key in stats and stats[key] == stats[key], key
    theta1, phi1 = params(w, "theta"), params(w, "phi")
    assert all(torch.equal(theta0[k], theta1[k]) for k in theta0)  # backbone frozen, bitwise
    assert max_diff(phi0, phi1) > 0
    _, hidden = naive_logits(engine.model, batch)  # (B, T, d) post-norm h_t
    forced = torch.zeros_like(batch.response_mask)
    forced[:, 0] = True
    logps = []
    for sd in (phi0, phi1):
        head = copy.deepcopy(engine.strategy.head)
        head.load_state_dict({k.removeprefix("temperature_head."): v for k, v in sd.items()})
        with torch.no_grad():
            logps.append(head.log_prob(hidden, batch.gate, batch.z, forced))
    mask = batch.response_mask
    assert (logps[0] - batch.logp_phi)[mask].abs().max() < 1e-4  # same head as the behaviour
    delta = ((logps[1] - logps[0]) * mask).sum(-1) / mask.sum(-1)  # (B,)
    pos, neg = batch.advantages > 0, batch.advantages < 0
    assert delta[pos].mean() > 0 and delta[pos].mean() > delta[neg].mean()


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_non_finite_loss_skips_the_step_and_leaves_no_trace(tiny_model_dir, engine, batch,
                                                             zero_stage):
    bad = batch.select(list(range(len(batch))))
    bad.advantages = batch.advantages.clone()
    bad.advantages[3] = float("nan")
    w = make_worker(tiny_model_dir, engine, zero_stage=zero_stage)
    before = params(w)
    old = w.compute_old_logprobs(bad)
    st = w.update_theta(bad, old)[0]
    assert st["actor/skipped_nonfinite"] == 1 and st["actor/optimizer_steps"] == 0
    st = w.update_phi(bad)
    assert st["phi/skipped_nonfinite"] == 1
    after = params(w)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # no stale gradient or optimizer state: a clean step now equals a fresh worker's clean step
    w.update_theta(batch, old)
    w.update_phi(batch)
    fresh = make_worker(tiny_model_dir, engine, zero_stage=zero_stage)
    fresh.update_theta(batch, fresh.compute_old_logprobs(batch))
    fresh.update_phi(batch)
    assert max_diff(params(w), params(fresh)) == 0


def test_get_weights_load_into_fresh_models(tiny_model_dir, engine, batch):
    from transformers import AutoModelForCausalLM

    w = make_worker(tiny_model_dir, engine)
    w.update_theta(batch, w.compute_old_logprobs(batch))
    w.update_phi(batch)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    fresh.load_state_dict(w.get_weights("theta"))
    ours, _ = naive_logits(w.theta.module, batch)
    theirs, hidden = naive_logits(fresh, batch)
    assert torch.equal(ours, theirs)
    assert not torch.equal(theirs, naive_logits(engine.model, batch)[0])  # the step is in there
    phi = w.get_weights("phi")
    names = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
    assert set(phi) == {f"temperature_head.{k}" for k in names}
    head = copy.deepcopy(engine.strategy.head)
    head.load_state_dict({k.removeprefix("temperature_head."): v for k, v in phi.items()})
    assert torch.equal(head(hidden), w.phi.module.temperature_head(hidden))
    assert set(w.get_weights("all")) == set(phi) | set(w.get_weights("theta"))


@pytest.mark.parametrize("zero_stage, dtype", [(0, "float32"), (1, "float32"), (2, "float32"),
                                               (3, "float32"), (0, "bfloat16"), (3, "bfloat16")])
def test_checkpoint_round_trip_is_bitwise(tiny_model_dir, engine, batch, tmp_path, zero_stage,
                                          dtype):
    """save_checkpoint / load_checkpoint (learner.checkpoint): the next step after a restore
    equals the next step after the save, bit for bit (weights, schedule, RNG). Under ZeRO-3 the
    restore reads only this rank's optimizer shard (theta comes back from its fp32 master
    weights), so model/ is moved away before it. In bfloat16 DeepSpeed wraps the optimizer
    (its own mixed-precision optimizers, fp32 masters) at every stage."""
    w = make_worker(tiny_model_dir, engine, zero_stage=zero_stage, warmup_steps=3, dtype=dtype)
    old = w.compute_old_logprobs(batch)
    w.update_theta(batch, old)  # non-trivial optimizer state and schedule position
    w.update_phi(batch)
    written = w.save_checkpoint(str(tmp_path))
    assert all(e["sha256"] == sha256_of(p) for p, e in written.items())  # what is on disk

    def step():
        stats = w.update_theta(batch, old)[0]
        w.update_phi(batch)
        return stats["actor/lr"], params(w), torch.rand(3)

    lr1, p1, r1 = step()
    if zero_stage == 3:  # theta is not read from model/: only the head's file is
        for f in (tmp_path / "model").glob("model-*.safetensors"):
            f.rename(f.with_suffix(".moved"))
    w.load_checkpoint(str(tmp_path))
    lr2, p2, r2 = step()
    assert lr1 == lr2 == pytest.approx(1e-3 * 2 / 3)  # second warm-up update
    assert all(torch.equal(p1[k], p2[k]) for k in p1) and torch.equal(r1, r2)
    rank = tmp_path / "learner_rank0"
    assert sorted(os.listdir(rank)) == ["optimizer_phi.pt", "optimizer_theta.pt", "rng.pt",
                                        "state.json"]
    assert {str(p) for p in rank.iterdir()} <= set(written)  # hashed by the rank that wrote


@pytest.mark.parametrize("mini_batches", [1, 2])
def test_train_step_runs_the_phases_and_returns_the_meta_input(tiny_model_dir, engine, batch,
                                                              mini_batches):
    w = make_worker(tiny_model_dir, engine, mini_batches=mini_batches)
    stats, meta = w.train_step(batch, "joint", CANDIDATES)
    assert {"actor/pg_loss", "phi/pg_loss", "timing_s/update_actor",
            "timing_s/update_phi"} <= set(stats)
    # a separate old-log-prob pass only with several optimizer steps per batch
    assert ("timing_s/old_log_prob" in stats) == (mini_batches > 1)
    assert stats["actor/rollout_logp_diff_max"] < 1e-4  # the per-token temperature invariant
    assert meta["loglik"].shape == (len(batch), len(CANDIDATES))
    assert torch.equal(meta["advantages"], batch.advantages)
    # tau vs the untempered entropy: the same correlation as a plain recompute (before the update)
    logits, _ = naive_logits(make_worker(tiny_model_dir, engine).theta.module, batch)
    ent = -(logits.log_softmax(-1).exp() * logits.log_softmax(-1)).sum(-1)
    m = batch.response_mask
    want = torch.corrcoef(torch.stack([batch.tau[m].double(), ent[m].double()]))[0, 1].item()
    assert stats["tau/entropy_corr"] == pytest.approx(want, abs=1e-4)
    assert stats["actor/entropy_untempered"] == pytest.approx(ent[m].mean().item(), rel=1e-4)
    theta = params(w, "theta")
    stats, meta = w.train_step(batch, "phi")
    assert meta is None and "actor/pg_loss" not in stats and "phi/pg_loss" in stats
    assert all(torch.equal(theta[k], v) for k, v in params(w, "theta").items())


@pytest.mark.parametrize("extra", [{}, {"kl_coef": 0.1, "entropy_coef": 0.01,
                                      "skip_zero_adv": False}])
def test_one_pass_update_equals_a_separate_old_pass(tiny_model_dir, engine, batch, extra):
    """mini_batches = 1: train_step takes log pi_old, the entropies, l_k and the reference
    log-probs from the update's own forward; the same values, stats and step as two passes."""
    two = make_worker(tiny_model_dir, engine, micro_batch_size=3, **extra)
    old = two.compute_old_logprobs(batch, CANDIDATES)
    want = two.update_theta(batch, old)[0]
    one = make_worker(tiny_model_dir, engine, micro_batch_size=3, **extra)
    got, meta = one.train_step(batch, "theta", CANDIDATES)
    assert "timing_s/old_log_prob" not in got
    assert (meta["loglik"] - old["loglik"]).abs().max() < 1e-6
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", "actor/kl_loss",
                "actor/entropy_loss", "actor/ratio_max"):
        if key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert got["actor/rollout_logp_diff_max"] < 1e-4
    assert max_diff(params(one, "theta"), params(two, "theta")) < 1e-6
    with pytest.raises(ValueError, match="mini_batches = 1"):
        make_worker(tiny_model_dir, engine, mini_batches=2).update_theta(batch)


def _counting(forward, calls: list):
    """`forward`, appending to `calls` on each call."""
    return lambda *a, **k: calls.append(1) or forward(*a, **k)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_shared_prompts_give_the_same_values_gradients_and_steps(tiny_model_dir, engine, batch,
                                                                 zero_stage):
    """learner.share_prompt: each group's prompt runs once and its rows continue from its KV
    cache. Old log-probs, entropies, the theta and phi steps equal those of whole-row forwards."""
    runs = {}
    for share in (True, False):
        w = make_worker(tiny_model_dir, engine, micro_batch_size=8, share_prompt=share,
                        zero_stage=zero_stage)
        m = make_micro(batch, torch.arange(8), w.device, w.share_prompt)  # two groups of 4 rows
        assert (m.prompt is not None) == share and (not share or len(m.prompt.ids) == 2)
        old = w.compute_old_logprobs(batch, CANDIDATES)
        calls = []
        w.theta.forward = _counting(w.theta.forward, calls)
        theta_stats = w.update_theta(batch, old)[0]
        assert len(calls) == 2  # one engine forward per micro-batch: its backward hooks expect it
        runs[share] = (old, theta_stats, w.update_phi(batch), params(w))
    (o1, t1, f1, p1), (o2, t2, f2, p2) = runs[True], runs[False]
    for k in o1:
        assert (o1[k] - o2[k]).abs().max() < 1e-5, k
    for key in ("actor/grad_norm", "actor/pg_loss", "phi/grad_norm", "phi/pg_loss"):
        got, want = (t1 | f1)[key], (t2 | f2)[key]
        assert got == pytest.approx(want, rel=1e-4, abs=1e-7), key
    assert max_diff(p1, p2) < 1e-4  # Adam's first step ~ lr * sign(g): see the 2-rank test


def test_share_prompt_only_where_the_kv_cache_is_plain():
    from types import SimpleNamespace

    from learner.batching import plain_kv_cache

    assert plain_kv_cache(SimpleNamespace())  # no layer_types: Qwen2 / Llama
    assert plain_kv_cache(SimpleNamespace(layer_types=["full_attention", "sliding_attention"]))
    assert not plain_kv_cache(SimpleNamespace(layer_types=["linear_attention", "full_attention"]))


def test_informative_rows_pads_to_equal_rank_slices():
    adv = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.5, 0.0, 0.0])
    assert informative_rows(adv).tolist() == [1, 3, 4]
    assert informative_rows(adv, world_size=2).tolist() == [0, 1, 3, 4]  # one zero row pads
    assert informative_rows(adv, world_size=2, min_per_rank=3).tolist() == [0, 1, 2, 3, 4, 5]
    assert informative_rows(torch.zeros(4), world_size=2).tolist() == [0, 1]


def test_skipping_zero_advantage_rows_changes_only_the_denominator(tiny_model_dir, engine, batch):
    """Half the groups all-equal (advantage 0): dropping them leaves the token-mean gradient's
    direction alone and scales its norm by (all tokens / kept tokens), so they carried nothing."""
    b = batch.select(list(range(len(batch))))
    b.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 2 + [1.0] * 4 + [0.0] * 4)
    b.advantages = compute_grpo_advantages(b.rewards, b.group_index)
    tokens = b.response_mask.sum(-1).float()
    ratio = float(tokens.sum() / tokens[:8].sum())
    runs = {}
    for skip in (True, False):
        w = make_worker(tiny_model_dir, engine, skip_zero_adv=skip)
        stats, _ = w.train_step(b, "theta")
        runs[skip] = stats
    assert runs[True]["actor/kept_frac"] == 0.5 and "actor/kept_frac" not in runs[False]
    assert runs[True]["actor/grad_norm"] == pytest.approx(runs[False]["actor/grad_norm"] * ratio,
                                                           rel=1e-4)


# ------------------------------------------------------------------ 2 ranks == 1 rank (Ray)


@pytest.fixture(scope="module")
def ray_local():
    import ray
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": root, "DS_ACCELERATOR": "cpu"}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_two_ranks_equal_one_rank_on_the_concatenated_batch(tiny_model_dir, engine, batch,
                                                            ray_local):
    from learner.ds_utils import free_port

    ray = ray_local
    cfg = dict(lr=1e-3, micro_batch_size=3, mini_batches=2, zero_stage=2)
    head = engine.strategy.head
    port = free_port()
    Actor = ray.remote(num_cpus=1)(LearnerWorker)
    ranks = [Actor.remote(str(tiny_model_dir), LearnerConfig(**cfg), PhiTrainingConfig(lr=1e-2),
                          head, 10, r, 2, "127.0.0.1", port) for r in range(2)]
    halves = batch.split(2)
    olds = ray.get([a.compute_old_logprobs.remote(h) for a, h in zip(ranks, halves)])
    theta_stats = [st for st, _ in
                   ray.get([a.update_theta.remote(h, o) for a, h, o in zip(ranks, halves, olds)])]
    phi_stats = ray.get([a.update_phi.remote(h) for a, h in zip(ranks, halves)])
    w0, w1 = ray.get([a.get_weights.remote("all") for a in ranks])
    for a in ranks:
        ray.kill(a)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # replicas stay identical

    single = make_worker(tiny_model_dir, engine, **cfg)
    s_theta = single.update_theta(batch, single.compute_old_logprobs(batch))[0]
    s_phi = single.update_phi(batch)
    assert theta_stats[0] == theta_stats[1]  # reduced stats: the same on every rank
    for key in ("actor/grad_norm", "actor/pg_loss", "actor/entropy"):
        assert theta_stats[0][key] == pytest.approx(s_theta[key], rel=1e-5, abs=1e-7), key
    for key in ("phi/grad_norm", "phi/pg_loss"):
        assert phi_stats[0][key] == pytest.approx(s_phi[key], rel=1e-5, abs=1e-7), key
    print("2 ranks vs 1 rank, max |param diff|:", max_diff(w0, params(single)))
    # Adam's first step is ~lr * sign(g): where g is ~0, summation-order noise moves an element by
    # a fraction of lr (1e-3); a wrong mini-batch or rank assignment moves many by ~lr
    assert max_diff(w0, params(single)) < 1e-4


def test_dual_clip_reaches_both_phases_and_logs_the_share_it_caps(tiny_model_dir, engine, batch):
    """learner.clip_ratio_c: with log pi_old 2 below log pi (ratio e^2 > 3) every token of a
    negative-advantage response is capped, in the theta and the phi phase; off, nothing is
    logged."""
    mask = batch.response_mask
    share = float(((batch.advantages < 0)[:, None] & mask).sum() / mask.sum())
    assert 0 < share < 1
    shifted = batch.select(list(range(len(batch))))
    shifted.logp_phi = batch.logp_phi - 2.0  # the phi phase's pi_old is the behaviour log-prob
    w = make_worker(tiny_model_dir, engine, clip_ratio_c=3.0)
    old = w.compute_old_logprobs(batch)
    stats = w.update_theta(batch, {**old, "old_logp": old["old_logp"] - 2.0})[0]
    assert stats["actor/pg_clipfrac_lower"] == pytest.approx(share, abs=1e-6)
    assert w.update_phi(shifted)["phi/pg_clipfrac_lower"] == pytest.approx(share, abs=1e-6)
    off = make_worker(tiny_model_dir, engine)
    stats, _ = off.update_theta(batch, off.compute_old_logprobs(batch))
    assert "actor/pg_clipfrac_lower" not in stats
    assert "phi/pg_clipfrac_lower" not in off.update_phi(shifted)


def test_a_learner_builds_after_another_library_destroyed_the_process_group(tiny_model_dir,
                                                                             engine):
    """vLLM's in-process engine destroys torch.distributed on close; DeepSpeed's cached clone of
    the old world group must not outlive it (it did: 'Group ... is not registered')."""
    import torch.distributed as dist

    make_worker(tiny_model_dir, engine)
    assert dist.is_initialized()
    dist.destroy_process_group()
    worker = make_worker(tiny_model_dir, engine)
    assert dist.is_initialized()
    assert set(params(worker, "phi")) == {f"temperature_head.{k}"
                                          for k in engine.strategy.head.state_dict()}


# --------------------------------------------------------------------------- memory options


def _theta_step(worker, batch):
    stats, _ = worker.update_theta(batch, worker.compute_old_logprobs(batch))
    return stats, params(worker, "theta")


def test_zero3_loads_partitioned_and_takes_the_plain_step(tiny_model_dir, engine, batch):
    """ZeRO-3 builds theta inside zero.Init (every parameter partitioned as it loads), and one
    theta step gives the plain (stage 0) loss, gradient and update."""
    plain = make_worker(tiny_model_dir, engine, share_prompt=False)
    zero3 = make_worker(tiny_model_dir, engine, share_prompt=False, zero_stage=3)
    assert all(hasattr(p, "ds_tensor") for p in zero3.theta.module.parameters())
    assert params(zero3, "theta").keys() == params(plain, "theta").keys()
    assert max_diff(params(zero3, "theta"), params(plain, "theta")) == 0.0  # the file's weights
    (a, wa), (b, wb) = _theta_step(plain, batch), _theta_step(zero3, batch)
    for key in ("actor/pg_loss", "actor/grad_norm"):
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert max_diff(wa, wb) < 1e-4  # Adam's first step ~ lr * sign(g): see the 2-rank test


def test_zero3_loads_a_folder_whose_names_transformers_converts(tiny_model_dir, engine, tmp_path):
    """Tensors stored under names that are not the model's own (here the base model's, without
    the ``model.`` prefix, as some folders hold them) load through transformers' conversion under
    ZeRO-3 too: the same weights as the plain folder."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "renamed"
    shutil.copytree(tiny_model_dir, folder)
    for f in folder.glob("*.safetensors"):
        save_file({k.removeprefix("model."): v for k, v in load_file(str(f)).items()}, str(f),
                  metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {k.removeprefix("model."): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data))
    plain = make_worker(tiny_model_dir, engine, zero_stage=3)
    renamed = make_worker(folder, engine, zero_stage=3)
    assert max_diff(params(renamed, "theta"), params(plain, "theta")) == 0.0


def test_gradient_checkpointing_recomputes_layers_and_changes_no_number(tiny_model_dir, engine,
                                                                         batch):
    """learner.gradient_checkpointing: each decoder layer runs forward again in the backward
    pass (so its activations were not kept); losses, gradients and the update are the plain
    path's bit for bit (share_prompt is off for both: checkpointed layers take no KV cache)."""
    plain = make_worker(tiny_model_dir, engine, share_prompt=False)
    gc = make_worker(tiny_model_dir, engine, gradient_checkpointing=True)
    assert not gc.share_prompt
    calls = []
    layer = gc.theta.module.model.layers[0]
    layer.register_forward_pre_hook(lambda *_: calls.append(1))
    (a, wa), (b, wb) = _theta_step(plain, batch), _theta_step(gc, batch)
    micro = -(-len(batch) // gc.cfg.micro_batch_size)
    assert len(calls) == 2 * micro + micro  # old pass; update forward + its recompute
    assert not any(m.training for m in layer.modules() if m is not layer)  # no dropout mode
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert b[key] == a[key], key
    assert max_diff(wa, wb) == 0.0


@pytest.mark.parametrize("extra", [dict(zero_stage=2, offload_optimizer=True),
                                   dict(zero_stage=3, offload_optimizer=True,
                                        offload_params=True)],
                         ids=["optimizer", "optimizer+params"])
def test_cpu_offload_takes_the_plain_step(tiny_model_dir, engine, batch, extra):
    """learner.offload_optimizer / offload_params (DeepSpeed's CPU offload, the client AdamW
    stepping the CPU copies) give the same loss and gradient and, within float noise, the same
    update as the same stage without offload."""
    stage = {"zero_stage": extra["zero_stage"]}
    plain = make_worker(tiny_model_dir, engine, share_prompt=False, **stage)
    off = make_worker(tiny_model_dir, engine, share_prompt=False, **extra)
    (a, wa), (b, wb) = _theta_step(plain, batch), _theta_step(off, batch)
    for key in ("actor/pg_loss", "actor/grad_norm"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    assert max_diff(wa, wb) < 1e-6


def test_the_reference_model_is_sharded_like_theta_under_zero3(tiny_model_dir, engine, batch):
    """kl_coef > 0 under ZeRO-3: the frozen reference is partitioned too (no full copy per rank)
    and scores as the full copy of stage 0 does."""
    kl = dict(kl_coef=0.1, skip_zero_adv=False, share_prompt=False)
    full = make_worker(tiny_model_dir, engine, **kl)
    sharded = make_worker(tiny_model_dir, engine, zero_stage=3, **kl)
    assert all(hasattr(p, "ds_tensor") for p in sharded.ref.parameters())
    a, b = full.compute_old_logprobs(batch), sharded.compute_old_logprobs(batch)
    torch.testing.assert_close(b["ref_logp"], a["ref_logp"], atol=1e-6, rtol=0)
    assert not torch.equal(a["ref_logp"], torch.zeros_like(a["ref_logp"]))
