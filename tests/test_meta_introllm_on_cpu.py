"""IntroLLM temperature head: log-probs, sampling rules, init, phi-loss gradients
(docs/algorithms.md §2)."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from learner.core_algos import phi_policy_loss
from meta import IntroLLM, RowContext, TemperatureHead


def head64(d=8, seed=0):
    torch.manual_seed(seed)
    return TemperatureHead(d, head_init_std=0.3).double()  # larger W2 so rows differ


def test_param_count_matches_paper_overhead():
    head = TemperatureHead(2048)
    n = sum(p.numel() for p in head.parameters())
    # d*d/2 + d/2 (W1, b1) + (d/2)*3 + 3 (W2, b2) = 2,097,152 + 1,024 + 3,072 + 3
    assert n == 2048 * 1024 + 1024 + 1024 * 3 + 3 == 2_101_251
    assert round(100 * n / 1.72e9, 3) == 0.122  # "+0.122 % parameters on Qwen3-1.7B"


def test_init_gives_gate_half_and_beta_two():
    torch.manual_seed(0)
    head = TemperatureHead(64)
    gate_logit, alpha, beta = head.distribution_params(torch.randn(100, 64))
    assert torch.allclose(torch.sigmoid(gate_logit), torch.full((100,), 0.5), atol=0.02)
    assert torch.allclose(alpha, torch.full((100,), 2.0), atol=0.05)
    assert torch.allclose(beta, torch.full((100,), 2.0), atol=0.05)
    torch.testing.assert_close(torch.sigmoid(head.fc2.bias[0]), torch.tensor(0.5))
    torch.testing.assert_close(nn.functional.softplus(head.fc2.bias[1:]) + 1e-3,
                               torch.tensor([2.0, 2.0]))


def test_head_runs_in_fp32_for_bf16_input():
    head = TemperatureHead(16)
    h = torch.randn(5, 16).to(torch.bfloat16)
    u = head(h)
    assert u.dtype == torch.float32
    torch.testing.assert_close(u, head(h.float()))


def test_log_prob_matches_scipy():
    head = head64()
    h = torch.randn(6, 8, dtype=torch.float64)
    gate = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    # 1e-9 is clamped to 1e-6
    z = torch.tensor([0.3, 0.0, 0.9, 0.0, 1e-9, 0.5], dtype=torch.float64)
    forced = torch.tensor([True, False, False, False, False, False])
    got = head.log_prob(h, gate, z, forced)
    gate_logit, alpha, beta = (t.detach().numpy() for t in head.distribution_params(h))
    p = 1 / (1 + np.exp(-gate_logit))
    for i in range(6):
        c = int(gate[i])
        want = 0.0 if forced[i] else stats.bernoulli.logpmf(c, p[i])
        if c:
            want += stats.beta.logpdf(min(max(z[i].item(), 1e-6), 1 - 1e-6), alpha[i], beta[i])
        assert got[i].item() == pytest.approx(want, rel=1e-10, abs=1e-10)


def test_entropy_matches_scipy():
    head = head64()
    h = torch.randn(4, 8, dtype=torch.float64)
    gate_h, beta_h = head.entropy(h)
    gate_logit, alpha, beta = (t.detach() for t in head.distribution_params(h))
    for i in range(4):
        p = torch.sigmoid(gate_logit[i]).item()
        assert gate_h[i].item() == pytest.approx(stats.bernoulli.entropy(p), rel=1e-10)
        want = stats.beta.entropy(alpha[i].item(), beta[i].item())
        assert beta_h[i].item() == pytest.approx(want, rel=1e-9)


def test_gate_zero_rows_cannot_leak_nan():
    head = head64()
    h = torch.randn(4, 8, dtype=torch.float64)
    gate = torch.zeros(4, dtype=torch.float64)
    z = torch.tensor([float("nan"), float("inf"), -5.0, 0.0], dtype=torch.float64)  # garbage
    logp = head.log_prob(h, gate, z, torch.zeros(4, dtype=torch.bool))
    logp.sum().backward()
    assert torch.isfinite(logp).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def row_ctx(n, d, seed, positions=None, hidden_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, 5, (n,), generator=g) if positions is None else positions
    return RowContext(positions=positions, prev_tau=torch.rand(n, generator=g) * 3 + 0.1,
                      base_tau=torch.ones(n),
                      hidden=torch.randn(n, d, generator=g).to(hidden_dtype),
                      generator=torch.Generator().manual_seed(seed + 1))


def test_select_sampling_rules():
    s = IntroLLM(hidden_size=16, tau_min=0.5, tau_max=1.5)
    c = row_ctx(4000, 16, seed=0)
    d = s.select(c)
    on = d.gate == 1
    assert d.tau.dtype == d.gate.dtype == d.z.dtype == d.logp_phi.dtype == torch.float32
    assert torch.all(d.gate[c.positions == 0] == 1)  # the head decides the first temperature
    assert torch.all((d.tau[on] >= 0.5) & (d.tau[on] <= 1.5))
    assert torch.all(d.tau[~on] == c.prev_tau[~on]) and torch.all(d.z[~on] == 0)
    torch.testing.assert_close(d.tau[on], 0.5 + d.z[on] * 1.0)
    rate = d.gate[c.positions > 0].mean().item()
    assert 0.45 < rate < 0.55  # sigmoid(u_c) ~ 0.5 at init
    forced = c.positions == 0
    torch.testing.assert_close(d.logp_phi, s.log_prob(c.hidden, d.gate, d.z, forced))
    # reproducible with the same generator seed
    assert torch.equal(s.select(row_ctx(4000, 16, seed=0)).tau, d.tau)


def test_select_mean_mode_and_bf16_hidden():
    s = IntroLLM(hidden_size=16, temperature_mode="mean")
    c = row_ctx(200, 16, seed=3, positions=torch.zeros(200, dtype=torch.long),
                hidden_dtype=torch.bfloat16)
    d = s.select(c)
    # Beta(~2, ~2) mean ~ 0.5 -> tau ~ 0.5 + 0.5 * 1.0 = 1.0
    assert torch.all(d.gate == 1) and torch.allclose(d.tau, torch.ones(200), atol=0.02)
    d2 = s.select(row_ctx(200, 16, seed=3, positions=torch.zeros(200, dtype=torch.long)),
                  temperature_mode="sample")
    assert d2.tau.std() > 0.1  # sampled temperatures spread out
    with pytest.raises(ValueError, match="needs ctx.hidden"):
        s.select(RowContext(positions=torch.zeros(1), prev_tau=torch.ones(1),
                            base_tau=torch.ones(1)))


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = IntroLLM(hidden_size=16, head_init_std=0.3)
    torch.manual_seed(1)
    b = IntroLLM(hidden_size=16, head_init_std=0.3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.select(row_ctx(50, 16, 5)).tau, b.select(row_ctx(50, 16, 5)).tau)


@pytest.mark.parametrize("kwargs,message", [
    (dict(tau_min=1.7, tau_max=1.5),
     r"tau_min \(1.7\) must be < tau_max \(1.5\); set e.g. tau_min=0.5"),
    (dict(gate_init_prob=1.0), r"gate_init_prob \(1.0\) must be in \(0, 1\)"),
    (dict(beta_init=0.0), r"beta_init \(0.0\) must be > eps"),
    (dict(temperature_mode="greedy"), r"temperature_mode \('greedy'\) must be 'sample' or 'mean'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IntroLLM(hidden_size=8, **kwargs)


class _LogProb(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, h, gate, z, forced):
        return self.head.log_prob(h, gate, z, forced)


def test_phi_loss_gradients_match_finite_differences():
    B, T, d = 3, 4, 6
    head = head64(d, seed=2)
    wrapper = _LogProb(head)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(B, T, d, generator=g, dtype=torch.float64)  # detached: backbone frozen
    gate = (torch.rand(B, T, generator=g) < 0.6).double()
    gate[:, 0] = 1.0
    z = torch.rand(B, T, generator=g, dtype=torch.float64) * gate
    forced = torch.zeros(B, T, dtype=torch.bool)
    forced[:, 0] = True
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5, 0.7], dtype=torch.float64)
    with torch.no_grad():  # old log-probs near the current ones, two far enough to be clipped
        noise = torch.rand(B, T, generator=g, dtype=torch.float64) * 0.1 - 0.05
        old = wrapper(h, gate, z, forced) + noise
        old[0, 1] += 0.6
        old[2, 2] -= 0.6
    names = [n for n, _ in wrapper.named_parameters()]

    def loss_fn(*params):
        new = torch.func.functional_call(wrapper, dict(zip(names, params)), (h, gate, z, forced))
        return phi_policy_loss(new, old, adv, mask)[0]

    params = tuple(p.detach().clone().requires_grad_(True) for p in wrapper.parameters())
    assert torch.autograd.gradcheck(loss_fn, params, eps=1e-6, atol=1e-6)
