"""GRPO advantages, PPO-clip loss, aggregation and KL (docs/algorithms.md §1), checked by hand
and by loops."""

import math
from collections import defaultdict

import pytest
import torch

from learner.core_algos import (
    agg_loss,
    compute_grpo_advantages,
    kl_k3,
    phi_policy_loss,
    policy_loss,
)
from learner.logprobs import token_logprobs

E = math.e


def grpo_advantages_loop(rewards, index, norm_by_std=True, eps=1e-6):
    """verl's compute_grpo_outcome_advantage, as a per-group Python loop."""
    groups = defaultdict(list)
    for r, i in zip(rewards, index.tolist()):
        groups[i].append(r)
    out = torch.empty_like(rewards)
    for b, (r, i) in enumerate(zip(rewards, index.tolist())):
        g = torch.stack(groups[i])
        mean, std = (torch.tensor(0.0), torch.tensor(1.0)) if len(g) == 1 else (g.mean(), g.std())
        out[b] = (r - mean) / (std + eps) if norm_by_std else r - mean
    return out


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_vectorised_advantages_equal_per_group_loop(norm_by_std):
    g = torch.Generator().manual_seed(0)
    index = torch.tensor([7, 3, 7, 3, 3, 42, 7, 9, 9, 9, 9, 3])  # non-contiguous ids, one singleton
    rewards = (torch.rand(12, generator=g) > 0.5).float() + torch.rand(12, generator=g) * 0.1
    rewards[7:11] = 1.0  # a zero-variance group -> A = 0
    got = compute_grpo_advantages(rewards, index, norm_by_std=norm_by_std)
    torch.testing.assert_close(got, grpo_advantages_loop(rewards, index, norm_by_std),
                               atol=1e-6, rtol=1e-6)
    assert torch.all(got[7:11] == 0)


def test_advantages_hand_case():
    # rewards [1, 0, 0]: mean 1/3, unbiased std sqrt((4/9 + 1/9 + 1/9) / 2) = sqrt(1/3) = 0.57735
    # A = [2/3, -1/3, -1/3] / 0.57735 = [1.1547, -0.57735, -0.57735]
    got = compute_grpo_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0]))
    torch.testing.assert_close(got, torch.tensor([1.1547, -0.57735, -0.57735]), atol=1e-4, rtol=0)
    dr = compute_grpo_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 0]),
                                 norm_by_std=False)
    torch.testing.assert_close(dr, torch.tensor([2 / 3, -1 / 3, -1 / 3]))
    # a lone response: mean 0, std 1 (verl) -> A = r / (1 + 1e-6)
    torch.testing.assert_close(compute_grpo_advantages(torch.tensor([0.8]), torch.tensor([5])),
                               torch.tensor([0.8 / (1 + 1e-6)]))


def test_agg_loss_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx(3.0)  # 15 / 5 tokens
    # (6/3 + 9/2) / 2
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx(3.25)
    # 15 / (2 * 3)
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(2.5)
    # 15 / 10
    assert agg_loss(loss, mask, "seq-mean-token-sum-norm", max_len=5).item() == pytest.approx(1.5)
    empty = torch.tensor([[1, 1, 1], [0, 0, 0]])  # an empty sequence does not count in seq-mean
    assert agg_loss(loss, empty, "seq-mean-token-mean").item() == pytest.approx(2.0)
    assert agg_loss(loss, torch.zeros(2, 3), "token-mean").item() == 0.0
    with pytest.raises(ValueError, match=r"unknown loss_agg_mode 'sum'; supported: \['token-mean'"):
        agg_loss(loss, mask, "sum")


def three_tokens(delta, adv):
    logp = torch.zeros(1, 3, requires_grad=True)
    old = torch.full((1, 3), -float(delta))  # logp - old = delta -> ratio = e^delta
    return logp, old, torch.tensor([float(adv)]), torch.ones(1, 3, dtype=torch.bool)


def test_policy_loss_hand_cases():
    # ratio = [e, e, e], A = +1 -> clipped to 1.28 -> loss = -1.28, all clipped, zero gradient
    logp, old, adv, mask = three_tokens(1.0, 1.0)
    loss, st = policy_loss(logp, old, adv, mask)
    loss.backward()
    assert loss.item() == pytest.approx(-1.28) and st["pg_clipfrac"].item() == 1.0
    assert torch.all(logp.grad == 0)
    assert st["ppo_kl"].item() == pytest.approx(-1.0)
    assert st["ratio_mean"].item() == pytest.approx(E)
    # ratio = [e, e, e], A = -1 -> max(e, 1.28) = e, unclipped, d/dlogp = e / 3 per token
    logp, old, adv, mask = three_tokens(1.0, -1.0)
    loss, st = policy_loss(logp, old, adv, mask)
    loss.backward()
    assert loss.item() == pytest.approx(E) and st["pg_clipfrac"].item() == 0.0
    torch.testing.assert_close(logp.grad, torch.full((1, 3), E / 3))
    # ratio = [1/e]*3 = 0.368, A = -1 -> max(0.368, 0.8) = 0.8 (clip_low 0.2)
    logp, old, adv, mask = three_tokens(-1.0, -1.0)
    assert policy_loss(logp, old, adv, mask)[0].item() == pytest.approx(0.8)
    # ratio = 0.368, A = +1 -> max(-0.368, -0.8) = -0.368, not clipped
    logp, old, adv, mask = three_tokens(-1.0, 1.0)
    assert policy_loss(logp, old, adv, mask)[0].item() == pytest.approx(-1 / E)


def test_tis_weights_are_capped_and_detached():
    logp = torch.zeros(1, 3, requires_grad=True)
    old = torch.zeros(1, 3)  # ratio 1
    # exp(old - rollout) = [3, 0.5, 1]
    rollout = torch.tensor([[-math.log(3.0), math.log(2.0), 0.0]])
    loss, st = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 3), rollout_logp=rollout,
                           tis_cap=2.0)
    loss.backward()
    # weights [min(3, 2), 0.5, 1] = [2, 0.5, 1]; per-token loss -A * ratio * w -> mean -(3.5) / 3
    assert loss.item() == pytest.approx(-3.5 / 3)
    torch.testing.assert_close(logp.grad, torch.tensor([[-2 / 3, -0.5 / 3, -1 / 3]]))
    assert st["tis_clipfrac"].item() == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match=r"tis_cap \(0.0\) must be > 0"):
        policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 3), rollout_logp=rollout,
                    tis_cap=0.0)


def test_kl_k3_and_kl_term():
    # d = ref - logp = log 2 -> e^d - d - 1 = 2 - 0.693147 - 1 = 0.306853
    assert kl_k3(torch.tensor(0.0), torch.tensor(math.log(2))).item() == pytest.approx(
        1 - math.log(2))
    # clamped like verl's low_var_kl
    assert kl_k3(torch.tensor(0.0), torch.tensor(50.0)).item() == 10.0
    assert kl_k3(torch.tensor(-1.3), torch.tensor(-1.3)).item() == 0.0
    logp, old, adv, mask = three_tokens(0.0, 0.0)  # zero advantage -> pg loss 0
    ref = torch.full((1, 3), math.log(2))
    loss, st = policy_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.1)
    assert loss.item() == pytest.approx(0.1 * (1 - math.log(2))) and "kl_loss" in st
    assert policy_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.0)[0].item() == 0.0


def random_inputs(seed, B=4, T=6):
    g = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(B, T, generator=g) * 0.3 - 1.0  # noqa: E731
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    return dict(logp=r(), old_logp=r(), advantages=torch.randn(B, generator=g), response_mask=mask,
                rollout_logp=r(), ref_logp=r(), entropy=torch.rand(B, T, generator=g))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_garbage_in_padding_changes_neither_loss_nor_gradient(mode):
    clean = random_inputs(0)
    dirty = {k: v.clone() for k, v in clean.items()}
    pad = ~clean["response_mask"]
    for k, junk in [("logp", float("nan")), ("old_logp", float("inf")),
                    ("rollout_logp", -float("inf")), ("ref_logp", 1e30), ("entropy", float("nan"))]:
        dirty[k][pad] = junk
    adv_bt = clean["advantages"][:, None].expand(4, 6).clone()
    adv_bt[pad] = float("nan")
    dirty["advantages"] = adv_bt  # (B, T) advantages with NaN in padding
    results = []
    for inputs in (clean, dirty):
        logp = inputs.pop("logp").requires_grad_(True)
        loss, _ = policy_loss(logp, **inputs, loss_agg_mode=mode, tis_cap=2.0, kl_coef=0.05,
                              entropy_coef=0.01)
        loss.backward()
        results.append((loss.detach(), logp.grad))
    assert torch.isfinite(results[1][0]) and torch.isfinite(results[1][1]).all()
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1]) and torch.all(results[1][1][pad] == 0)


def test_per_token_constant_tau_equals_scalar_temperature_grpo():
    g = torch.Generator().manual_seed(5)
    B, T, V, temp = 4, 5, 17, 0.8
    logits = torch.randn(B, T, V, generator=g)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 3:] = False
    adv = compute_grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([0, 0, 1, 1]))

    def textbook_logp(x):
        return torch.log_softmax(x / temp, -1).gather(-1, tokens[..., None]).squeeze(-1)

    old = (textbook_logp(logits) - 0.1).detach()

    def loss_with(logp_fn):
        x = logits.clone().requires_grad_(True)
        loss, _ = policy_loss(logp_fn(x), old, adv, mask)
        loss.backward()
        return loss.detach(), x.grad

    textbook = loss_with(textbook_logp)
    per_token = loss_with(lambda x: token_logprobs(x, tokens, torch.full((B, T), temp),
                                                   chunk_size=3, response_mask=mask))
    assert torch.equal(textbook[0], per_token[0])
    torch.testing.assert_close(textbook[1], per_token[1], atol=1e-7, rtol=1e-6)


def test_phi_loss_is_policy_loss_and_advantages_broadcast():
    x = random_inputs(1)
    a = phi_policy_loss(x["logp"], x["old_logp"], x["advantages"], x["response_mask"])
    b = policy_loss(x["logp"], x["old_logp"], x["advantages"], x["response_mask"])
    assert torch.equal(a[0], b[0]) and a[1].keys() == b[1].keys()
    adv_bt = x["advantages"][:, None].expand(4, 6)  # (B,) and (B, T) advantages agree
    c = policy_loss(x["logp"], x["old_logp"], adv_bt, x["response_mask"])
    assert torch.equal(b[0], c[0])


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_losses_with_a_global_denominator_sum_to_the_batch_loss(mode):
    """Gradient accumulation / data parallel: slices with the batch's denominator add up."""
    from learner.core_algos import agg_loss

    g = torch.Generator().manual_seed(0)
    loss_mat = torch.randn(6, 5, generator=g)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 1, 3, 0, 2, 4])[:, None]  # (6, 5)
    full = agg_loss(loss_mat, mask, mode)
    if mode == "token-mean":
        denom = mask.sum()
    elif mode == "seq-mean-token-mean":
        denom = (mask.sum(-1) > 0).sum()
    else:
        denom = 6
    parts = sum(agg_loss(loss_mat[s], mask[s], mode, max_len=5, denominator=denom)
                for s in (slice(0, 2), slice(2, 3), slice(3, 6)))
    assert torch.allclose(parts, full)


def two_by_two(clip_ratio_c):
    """Rows A = -1 and A = +1, each with ratios [e^2, 1]; returns (loss, stats, grad)."""
    logp = torch.zeros(2, 2, requires_grad=True)
    old = torch.tensor([[-2.0, 0.0], [-2.0, 0.0]])  # logp - old = [2, 0] -> ratio [e^2, 1]
    loss, st = policy_loss(logp, old, torch.tensor([-1.0, 1.0]), torch.ones(2, 2),
                           clip_ratio_c=clip_ratio_c)
    loss.backward()
    return loss, st, logp.grad


def test_dual_clip_caps_a_negative_advantage_with_a_huge_ratio_only():
    e2 = E ** 2  # 7.389 > clip_ratio_c = 3
    # per-token losses: A = -1: [max(e^2, 1.28) = e^2 -> min(e^2, 3) = 3, 1];
    # A = +1: [max(-e^2, -1.28) = -1.28 (the upper clip, untouched by the dual-clip), -1];
    # token-mean (3 + 1 - 1.28 - 1) / 4
    loss, st, grad = two_by_two(3.0)
    assert loss.item() == pytest.approx((3.0 + 1.0 - 1.28 - 1.0) / 4)
    assert st["pg_clipfrac_lower"].item() == pytest.approx(1 / 4)  # one token of four is capped
    assert st["pg_clipfrac"].item() == pytest.approx(1 / 4)  # the PPO clip as before (A = +1, e^2)
    # the capped token has no gradient; d(-A ratio)/dlogp = -A ratio = 1 and -1 at ratio 1
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.25], [0.0, -0.25]]))
    # off: the negative-advantage token keeps its e^2, and gets the gradient e^2 / 4
    loss, st, grad = two_by_two(None)
    assert loss.item() == pytest.approx((e2 + 1.0 - 1.28 - 1.0) / 4)
    assert "pg_clipfrac_lower" not in st
    torch.testing.assert_close(grad, torch.tensor([[e2 / 4, 0.25], [0.0, -0.25]]))
    # the cap scales with |A|: A = -0.5 at ratio e^2 -> min(0.5 e^2, 3 * 0.5) = 1.5
    logp, old, _, mask = three_tokens(2.0, -0.5)
    loss, _ = policy_loss(logp, old, torch.tensor([-0.5]), mask, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"clip_ratio_c \(1.0\) must be > 1"):
        two_by_two(1.0)


def plain_ppo_clip(logp, old_logp, advantages, response_mask, rollout_logp, tis_cap=2.0):
    """The PPO-clip + TIS loss (token-mean) as written before the dual-clip existed."""
    mask = response_mask.bool()
    zero = torch.zeros_like(logp)
    adv = torch.where(mask, advantages[:, None].expand_as(logp), zero)
    ratio = torch.exp(torch.where(mask, logp - old_logp, zero).clamp(-20.0, 20.0))
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.28))
    pg = pg * torch.exp(torch.where(mask, old_logp - rollout_logp, zero)).clamp(max=tis_cap)
    return torch.where(mask, pg, zero).sum() / mask.sum()


def test_dual_clip_off_is_the_plain_ppo_clip_bit_for_bit():
    x = random_inputs(3)
    x["logp"] = x["old_logp"] + 1.5 * torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    args = (x["old_logp"], x["advantages"], x["response_mask"])
    ratio = torch.exp(x["logp"] - x["old_logp"])[x["response_mask"]]
    neg = (x["advantages"][:, None] < 0).expand(4, 6)[x["response_mask"]]
    assert (ratio[neg] > 3).any()  # the case has tokens the dual-clip would cap
    results = []
    for kwargs in ({}, {"clip_ratio_c": None}, "reference"):
        logp = x["logp"].clone().requires_grad_(True)
        if kwargs == "reference":
            loss = plain_ppo_clip(logp, *args, x["rollout_logp"])
        else:
            loss, _ = policy_loss(logp, *args, rollout_logp=x["rollout_logp"], tis_cap=2.0,
                                  **kwargs)
        loss.backward()
        results.append((loss.detach(), logp.grad))
    for loss, grad in results[1:]:
        assert torch.equal(loss, results[0][0]) and torch.equal(grad, results[0][1])
    # on, with every ratio below the cap: still the same loss and gradient, bit for bit
    logp = (x["old_logp"] + 0.1).requires_grad_(True)  # ratio e^0.1 < 3
    on, st = policy_loss(logp, *args, clip_ratio_c=3.0)
    off, _ = policy_loss(logp, *args)
    assert torch.equal(on, off) and st["pg_clipfrac_lower"].item() == 0.0
    assert torch.equal(torch.autograd.grad(on, logp)[0], torch.autograd.grad(off, logp)[0])


def test_phi_loss_takes_the_dual_clip_too():
    x = random_inputs(4)
    logp = x["old_logp"] + 2.0  # ratio e^2 everywhere
    a = phi_policy_loss(logp, x["old_logp"], x["advantages"], x["response_mask"], clip_ratio_c=3.0)
    b = policy_loss(logp, x["old_logp"], x["advantages"], x["response_mask"], clip_ratio_c=3.0)
    assert torch.equal(a[0], b[0]) and a[1]["pg_clipfrac_lower"].item() > 0


def test_seq_mean_token_sum_norm_is_verls_value_over_the_number_of_responses():
    """verl's agg_loss: sum(token sums) / loss_scale_factor (default loss_mask.shape[-1]), no
    1/B."""
    g = torch.Generator().manual_seed(2)
    loss = torch.randn(5, 7, generator=g)
    # an empty row counts in B
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 0, 5, 1])[:, None]
    verl = (loss * mask).sum(-1).sum() / mask.shape[-1]
    torch.testing.assert_close(agg_loss(loss, mask, "seq-mean-token-sum-norm"), verl / 5)
    torch.testing.assert_close(agg_loss(loss, mask, "seq-mean-token-sum-norm", max_len=10),
                               (loss * mask).sum() / (5 * 10))


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_a_group_of_equal_non_binary_rewards_gets_exactly_zero_advantage(norm_by_std):
    # float32 means of seven 0.9s / eight 0.1s miss the value by ~1e-8, which (std ~1e-8 + eps)
    # turned into |A| of 0.056 / 0.007 before the explicit equality test
    rewards = torch.tensor([0.9] * 7 + [0.1] * 8 + [1.0, 0.1, 0.1] + [0.8])
    index = torch.tensor([0] * 7 + [1] * 8 + [2] * 3 + [3])
    got = compute_grpo_advantages(rewards, index, norm_by_std=norm_by_std)
    assert torch.equal(got[:15], torch.zeros(15))
    want = grpo_advantages_loop(rewards, index, norm_by_std)  # a mixed group and a lone response
    torch.testing.assert_close(got[15:], want[15:], atol=1e-6, rtol=1e-6)
    assert got[18].item() == pytest.approx(0.8 / (1 + 1e-6) if norm_by_std else 0.8)
