"""The vLLM and transformers engines agree: given the same sequences, the same behaviour log-probs
and the same head outputs; and, sampling on their own, the same τ statistics within sampling error.

Both engines get the SAME IntroLLM head (seeded, with ``fc2`` perturbed so that σ(u_c), α and β
depend on the hidden state). Then:

* vLLM's sequences, teacher-forced through the transformers model + that head, reproduce vLLM's
  records: log_softmax(z_t / τ_t)[y_t] and log π_φ(c_t, z_t | h_t) (1e-4). vLLM cannot
  teacher-force, so the other direction checks that the transformers engine's own records match
  the same recompute.
* 64 prompts x 4 responses per engine: mean τ, gate rate, and mean τ at each of the first
  positions agree within 4 standard errors of the difference (SE from the per-response samples);
  a head with shifted Beta parameters is told apart by the same test (the check has teeth).

Marked slow like every test that starts vLLM (~20 s, 13 s of it the engine start).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytestmark = pytest.mark.slow


from data.prompts import render_prompt  # noqa: E402
from data.synthetic import generate  # noqa: E402
from learner.logprobs import token_logprobs  # noqa: E402
from meta.introllm import IntroLLM, TemperatureHead  # noqa: E402
from rollout.base import RolloutRequest  # noqa: E402
from rollout.hf_engine import HFEngine  # noqa: E402
from tests.conftest import VLLM_SHAPES, vllm_shapes  # noqa: E402

PROMPTS, GROUP = 64, 4
MAX_NEW = 24
MAX_PROMPT = 128
POSITIONS = 4  # per-position mean tau compared at t = 0 .. POSITIONS - 1
Z_SE = 4.0


def hidden_size(folder) -> int:
    return json.loads((folder / "config.json").read_text())["hidden_size"]


def varied_head(hidden: int, seed: int = 1234, shape_shift: float = 0.0) -> dict:
    """A seeded head whose outputs depend on h: fc2 ~ N(0, 0.5^2) instead of the ~0 init
    (on the fixture model: σ(u_c) ≈ 0.24 ± 0.14, Beta mean ≈ 0.69 ± 0.12 over prompt tokens).
    ``shape_shift`` is added to u_α and subtracted from u_β (another policy, for the control)."""
    torch.manual_seed(seed)
    head = TemperatureHead(hidden)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        head.fc2.weight.copy_(0.5 * torch.randn(head.fc2.weight.shape, generator=g))
        head.fc2.bias[1] += shape_shift
        head.fc2.bias[2] -= shape_shift
    return {k: v.clone() for k, v in head.state_dict().items()}


def introllm(hidden: int, state: dict) -> IntroLLM:
    strategy = IntroLLM(hidden_size=hidden)
    strategy.load_state_dict(state)
    return strategy


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    hidden = hidden_size(tiny_model_dir)
    state = varied_head(hidden)
    hf = HFEngine.from_path(tiny_model_dir, introllm(hidden, state), max_new_tokens=MAX_NEW,
                            batch_size=PROMPTS * GROUP)
    tok = hf.tokenizer
    base_tau = hf.strategy.plan(0, 1)[0].item()
    requests = [RolloutRequest(tok(render_prompt(p, tok))["input_ids"][-MAX_PROMPT:], g, base_tau,
                               p.id, p.task, p.answer, p.level)
                for g, p in enumerate(generate(PROMPTS, "eval", seed=0)) for _ in range(GROUP)]
    return hidden, state, hf, requests


@pytest.fixture(scope="module", params=vllm_shapes())
def vllm_run(request, tiny_model_dir, setup):
    """(the head the vLLM engine samples with, its batch), in each engine shape."""
    from rollout.vllm_engine import VLLMEngine

    hidden, state, _, requests = setup
    # a differently seeded strategy: the engine must end up with `state` only through load_weights
    engine = VLLMEngine(str(tiny_model_dir), introllm(hidden, varied_head(hidden, seed=99)),
                        max_model_len=MAX_PROMPT + MAX_NEW, max_new_tokens=MAX_NEW,
                        max_num_seqs=PROMPTS * GROUP, seed=0, **VLLM_SHAPES[request.param])
    try:
        engine.load_weights({f"temperature_head.{k}": v for k, v in state.items()})
        head = engine.head_state_dict()
        batch = engine.generate(requests, step=0, seed=7)
    finally:
        engine.close()
    return head, batch


@pytest.fixture(scope="module")
def hf_batch(setup):
    _, _, hf, requests = setup
    return hf.generate(requests, step=0, seed=7)


@torch.no_grad()
def teacher_force(model, batch):
    """Logits (B, T, V) and final post-norm hidden states (B, T, d) at the positions that produced
    each response token, from one forward of the recorded sequences."""
    ids, mask = batch.sequences()  # (B, Lp + T): left-padded prompt, right-padded response
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # as the engine: real tokens from 0
    h = model.model(input_ids=ids, attention_mask=mask.long(),
                    position_ids=positions).last_hidden_state  # (B, Lp + T, d)
    lp, t = batch.prompt_ids.shape[1], batch.response_ids.shape[1]
    h = h[:, lp - 1: lp - 1 + t]  # (B, T, d): h_t produces y_t
    return model.lm_head(h).float(), h


def check_records(batch, model, strategy: IntroLLM, tol: float = 1e-4) -> None:
    """The batch's records == the transformers recompute of the same sequences."""
    mask = batch.response_mask
    logits, hidden = teacher_force(model, batch)
    logp = token_logprobs(logits, batch.response_ids, batch.tau, response_mask=mask)
    assert (logp - batch.logp_rollout)[mask].abs().max() < tol
    plain = token_logprobs(logits, batch.response_ids, None, response_mask=mask)
    assert (plain - batch.logp_rollout)[mask].abs().max() > 1e-2  # tau matters: the check bites
    forced = torch.zeros_like(mask)
    forced[:, 0] = True
    logp_phi = strategy.log_prob(hidden, batch.gate, batch.z, forced)
    assert (logp_phi - batch.logp_phi)[mask].abs().max() < tol
    # the records are one consistent action per token: drawn tau from z, kept tau from t - 1
    on = (batch.gate == 1) & mask
    assert on[:, 0].all()
    torch.testing.assert_close(batch.tau[on], strategy.tau_from_z(batch.z[on]))
    prev = torch.cat([batch.base_tau[:, None], batch.tau[:, :-1]], 1)
    kept = (batch.gate == 0) & mask
    assert kept.any() and torch.equal(batch.tau[kept], prev[kept])
    # the head's outputs vary with h along these sequences (else agreement would be trivial)
    gate_logit, alpha, beta = strategy.head.distribution_params(hidden)
    assert torch.sigmoid(gate_logit)[mask].std() > 0.05
    assert (alpha / (alpha + beta))[mask].std() > 0.03


def test_both_engines_sample_with_the_same_head(setup, vllm_run):
    _, state, hf, _ = setup
    head, _ = vllm_run
    for k, v in state.items():
        assert torch.equal(head[k], v), k
        assert torch.equal(hf.strategy.state_dict()[k], v), k


def test_vllm_sequences_teacher_forced_through_transformers_give_its_records(setup, vllm_run):
    _, _, hf, _ = setup
    check_records(vllm_run[1], hf.model, hf.strategy)


def test_transformers_engine_records_match_the_same_recompute(setup, hf_batch):
    _, _, hf, _ = setup
    check_records(hf_batch, hf.model, hf.strategy)


# ----------------------------------------------------------------------------- τ statistics


def tau_statistics(batch) -> dict[str, list[float]]:
    """Per-response samples: its mean τ, its gate rate over t >= 1 (t = 0 is forced), and τ at
    each of the first positions t (over the responses that reached t)."""
    mask = batch.response_mask
    n = mask.sum(-1)  # (B,)
    out = {"mean_tau": ((batch.tau * mask).sum(-1) / n).tolist()}
    later = mask.clone()
    later[:, 0] = False
    has = later.any(-1)
    out["gate_rate"] = ((batch.gate * later).sum(-1)[has] / later.sum(-1)[has]).tolist()
    for t in range(POSITIONS):
        out[f"tau@{t}"] = batch.tau[mask[:, t], t].tolist()
    return out


def mean_and_se(x: list[float]) -> tuple[float, float]:
    m = sum(x) / len(x)
    var = sum((v - m) ** 2 for v in x) / (len(x) - 1)
    return m, math.sqrt(var / len(x))


def z_scores(a, b) -> dict[str, float]:
    """(mean_a - mean_b) / SE of the difference, per statistic."""
    sa, sb = tau_statistics(a), tau_statistics(b)
    out = {}
    for k in sa:
        (ma, ea), (mb, eb) = mean_and_se(sa[k]), mean_and_se(sb[k])
        out[k] = (ma - mb) / math.sqrt(ea ** 2 + eb ** 2)
    return out


def test_tau_statistics_agree_within_sampling_error(setup, vllm_run, hf_batch):
    vllm_batch = vllm_run[1]
    z = z_scores(vllm_batch, hf_batch)
    print("z-scores vLLM vs transformers:", {k: round(v, 2) for k, v in z.items()})
    assert all(abs(v) < Z_SE for v in z.values()), z
    stats = tau_statistics(vllm_batch)
    assert 0.1 < mean_and_se(stats["gate_rate"])[0] < 0.9  # both branches frequent
    assert mean_and_se(stats["mean_tau"])[1] < 0.02  # precise enough to mean something


def test_a_different_head_is_told_apart(setup, vllm_run):
    """Control: the same test flags a head whose Beta is shifted (u_α + 1, u_β - 1)."""
    hidden, _, hf, requests = setup
    other = HFEngine(hf.model, hf.tokenizer, introllm(hidden, varied_head(hidden, shape_shift=1.0)),
                     max_new_tokens=MAX_NEW, batch_size=PROMPTS * GROUP)
    z = z_scores(vllm_run[1], other.generate(requests, step=0, seed=7))
    print("z-scores vLLM vs shifted head:", {k: round(v, 2) for k, v in z.items()})
    assert abs(z["mean_tau"]) > Z_SE and abs(z["tau@0"]) > Z_SE, z
