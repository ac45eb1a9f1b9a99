"""Chunked per-token-temperature log-probs, entropies and TAMPO's l_k (docs/algorithms.md §1, §3).

Run as a script to measure tampo_loglik's peak memory at full scale:
    PYTHONPATH=. python tests/test_learner_logprobs_on_cpu.py 4096 151936 10 512

(the arguments: tokens, vocabulary, K, chunk_size)
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from learner.logprobs import tampo_loglik, token_entropy, token_logprobs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_batch(B=2, T=5, V=11, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 3).to(dtype)
    tokens = torch.randint(0, V, (B, T), generator=g)
    tau = torch.rand(B, T, generator=g) * 1.0 + 0.5  # per-token temperatures in [0.5, 1.5)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    return logits, tokens, tau, mask


def naive_logprobs(logits, tokens, tau):
    logp = torch.log_softmax(logits.float() / tau[..., None], -1)
    return logp.gather(-1, tokens[..., None]).squeeze(-1)


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 10, 64])  # B*T = 10 rows: 3, 4, 7 do not divide it
def test_chunked_logprobs_equal_naive_values_and_gradients(chunk):
    logits, tokens, tau, _ = make_batch()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    got = token_logprobs(a, tokens, tau, chunk_size=chunk)
    want = naive_logprobs(b, tokens, tau)
    assert got.shape == (2, 5) and torch.equal(got, want)
    w = torch.randn(2, 5)
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-6)


def test_constant_tau_equals_scalar_temperature_exactly():
    logits, tokens, _, _ = make_batch(B=3, T=7, V=13, seed=1)
    T = 0.7
    per_token = token_logprobs(logits, tokens, torch.full((3, 7), T), chunk_size=4)
    scalar = token_logprobs(logits, tokens, T, chunk_size=4)
    textbook = torch.log_softmax(logits / T, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.equal(per_token, textbook) and torch.equal(scalar, textbook)
    untempered = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.equal(token_logprobs(logits, tokens, None), untempered)


def test_bf16_logits_computed_in_fp32():
    logits, tokens, tau, _ = make_batch(dtype=torch.bfloat16)
    got = token_logprobs(logits, tokens, tau, chunk_size=3)
    assert got.dtype == torch.float32
    assert torch.equal(got, naive_logprobs(logits, tokens, tau))


def test_garbage_tau_and_tokens_at_padding_stay_finite():
    logits, tokens, tau, mask = make_batch()
    clean = token_logprobs(logits, tokens, tau, response_mask=mask)
    tau_bad, tok_bad = tau.clone(), tokens.clone()
    tau_bad[~mask] = torch.tensor([0.0, float("nan")])  # would give inf / NaN
    tok_bad[~mask] = -100  # would be an out-of-range gather
    x = logits.clone().requires_grad_(True)
    got = token_logprobs(x, tok_bad, tau_bad, chunk_size=3, response_mask=mask)
    assert torch.equal(got[mask], clean[mask]) and torch.isfinite(got).all()
    (got * mask).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.all(x.grad[~mask] == 0)


@pytest.mark.parametrize("use_tau", [False, True])
def test_chunked_entropy_equals_naive(use_tau):
    logits, _, tau, _ = make_batch(seed=3)
    t = tau if use_tau else None
    got = token_entropy(logits, t, chunk_size=3)
    scaled = logits / tau[..., None] if use_tau else logits
    want = torch.distributions.Categorical(logits=scaled).entropy()
    assert got.shape == (2, 5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    uniform = token_entropy(torch.zeros(1, 1, 8))
    # H(uniform over 8) = log 8
    torch.testing.assert_close(uniform, torch.log(torch.tensor([[8.0]])))


@pytest.mark.parametrize("chunk", [1, 4, 7, 100])
def test_tampo_loglik_equals_naive(chunk):
    logits, tokens, _, mask = make_batch(B=3, T=6, V=9, seed=4)
    mask[2] = False  # an empty response -> l_k = 0
    cands = (0.6, 0.9, 1.2, 1.5)
    got = tampo_loglik(logits, tokens, mask, cands, chunk_size=chunk)
    assert got.shape == (3, 4)
    for k, T in enumerate(cands):
        lp = torch.log_softmax(logits / T, -1).gather(-1, tokens[..., None]).squeeze(-1)  # (B, T)
        want = (lp * mask).sum(-1) / mask.sum(-1).clamp_min(1)
        torch.testing.assert_close(got[:, k], want, atol=1e-6, rtol=1e-6)
    assert torch.all(got[2] == 0)


def measure_peak(n_tokens: int, vocab: int, k: int, chunk: int) -> dict:
    """Peak-RSS growth of tampo_loglik above the logits themselves, in a fresh process."""
    code = f"""
import json, resource, torch
torch.set_num_threads(1)
from learner.logprobs import tampo_loglik
logits = torch.randn(1, {n_tokens}, {vocab})
tokens = torch.randint(0, {vocab}, (1, {n_tokens}))
mask = torch.ones(1, {n_tokens}, dtype=torch.bool)
cands = [0.6 + 0.1 * i for i in range({k})]
tampo_loglik(logits[:, :2], tokens[:, :2], mask[:, :2], cands, chunk_size={chunk})  # warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tampo_loglik(logits, tokens, mask, cands, chunk_size={chunk})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(logits_bytes=logits.numel() * 4, growth_bytes=after - before)))
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_tampo_loglik_does_not_materialise_k_copies():
    # 1024 tokens x 32000 vocab fp32 = 131 MB of logits; K unchunked tempered copies = 1.3 GB
    r = measure_peak(n_tokens=1024, vocab=32000, k=10, chunk=16)
    # measured ~10 MB: a few (16, V) temporaries
    assert r["growth_bytes"] < 0.5 * r["logits_bytes"], r


if __name__ == "__main__":
    n, v, k, c = (int(a) for a in sys.argv[1:5])
    r = measure_peak(n, v, k, c)
    print(f"logits {r['logits_bytes'] / 1e9:.2f} GB, peak growth {r['growth_bytes'] / 1e9:.3f} GB")


def test_the_chunk_default_is_the_configs():
    """One default for learner.logprob_chunk and the functions' chunk_size (it was 1024 vs 512)."""
    import inspect

    from launch.config import LearnerConfig
    from learner.logprobs import old_pass_stats

    for fn in (token_logprobs, token_entropy, tampo_loglik, old_pass_stats):
        default = inspect.signature(fn).parameters["chunk_size"].default
        assert default == LearnerConfig().logprob_chunk
    assert LearnerConfig().logprob_chunk == 1024
