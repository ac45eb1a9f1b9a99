"""The one-pass Triton log-prob kernels (learner.fused_logprobs) against the torch reference.

Triton's interpreter runs the kernels on CPU tensors, but only when TRITON_INTERPRET=1 is set
before triton is first imported, so the checks run in one subprocess (this file as a script) and
each test reads its own result. Every check returns the largest absolute error it saw.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
TOL = 2e-5  # fp32 maths in both; the kernel sums in another order


def _err(got, want):
    """largest error relative to 1 + |want| (log-probs reach -150 at T = 0.1: fp32 has ~1e-5
    there)"""
    return float(((got - want).abs() / (1 + want.abs())).max())


def _batch(B=3, T=6, V=300, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 4
    tokens = torch.randint(0, V, (B, T), generator=g)
    tau = torch.rand(B, T, generator=g) * 1.4 + 0.1  # [0.1, 1.5): sharp and flat rows
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, :] = False  # a response with no counted token
    return logits, tokens, tau, mask


def check_stats_k_temperatures():
    """logp, entropy and lse for 12 temperatures per row, V not a multiple of the block."""
    import torch

    from learner.fused_logprobs import tempered_stats

    logits, tokens, _, _ = _batch(V=1037)
    z, y = logits.reshape(-1, 1037), tokens.reshape(-1)
    temps = torch.tensor([0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.5, 3.0])
    logp, ent, lse = tempered_stats(z, y, 1.0 / temps)
    x = z[:, None, :] / temps[None, :, None]  # (N, K, V)
    ref = torch.log_softmax(x, -1)
    want_logp = ref.gather(-1, y[:, None, None].expand(-1, len(temps), 1)).squeeze(-1)
    return max(_err(logp, want_logp), _err(ent, -(ref.exp() * ref).sum(-1)),
               _err(lse, torch.logsumexp(x, -1)))


def check_bf16_logits():
    import torch

    from learner.fused_logprobs import tempered_stats

    logits, tokens, tau, _ = _batch()
    z, y, t = logits.reshape(-1, 300).bfloat16(), tokens.reshape(-1), tau.reshape(-1)
    logp, _, _ = tempered_stats(z, y, (1.0 / t)[:, None])
    want = torch.log_softmax(z.float() / t[:, None], -1).gather(-1, y[:, None])
    assert logp.dtype == torch.float32
    return float((logp - want).abs().max())


def check_gradient():
    """token_logprobs(impl=triton): values and d/dlogits equal the chunked torch reference."""
    import torch

    from learner.logprobs import token_logprobs

    logits, tokens, tau, mask = _batch()
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    got = token_logprobs(a, tokens, tau, response_mask=mask, impl="triton")
    want = token_logprobs(b, tokens, tau, chunk_size=4, response_mask=mask, impl="torch")
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
    (got * w * mask).sum().backward()
    (want * w * mask).sum().backward()
    assert torch.all(a.grad[~mask] == 0)
    scalar = token_logprobs(logits, tokens, 0.7, impl="triton")
    untempered = token_logprobs(logits, tokens, None, impl="triton")
    got, want = got.detach(), want.detach()
    errs = [(got - want).abs().max(), (a.grad - b.grad).abs().max(),
            (scalar - token_logprobs(logits, tokens, 0.7)).abs().max(),
            (untempered - token_logprobs(logits, tokens, None)).abs().max()]
    return max(float(e) for e in errs)


def check_old_pass():
    """old_pass_stats: one kernel launch gives what the torch reference gives in five passes."""
    import torch

    from learner.logprobs import old_pass_stats

    logits, tokens, tau, mask = _batch()
    cands = (0.6, 0.8, 1.0, 1.2, 1.5)
    fast = old_pass_stats(logits, tokens, tau, mask, cands, impl="triton")
    ref = old_pass_stats(logits, tokens, tau, mask, cands, chunk_size=5, impl="torch")
    assert fast.keys() == ref.keys() == {"old_logp", "entropy", "entropy_untempered", "loglik"}
    assert torch.all(fast["loglik"][2] == 0)  # the empty response
    # the check has teeth: the tempered and untempered entropies differ
    assert (ref["entropy"] - ref["entropy_untempered"])[mask].abs().max() > 0.1
    return max(float((fast[k] - ref[k])[mask].abs().max()) if k != "loglik"
               else float((fast[k] - ref[k]).abs().max()) for k in ref)


CHECKS = [check_stats_k_temperatures, check_bf16_logits, check_gradient, check_old_pass]


@pytest.fixture(scope="module")
def results():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, HERE], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", [c.__name__ for c in CHECKS])
def test_triton_kernel_matches_torch_reference(results, name):
    assert results[name] < TOL, results


def test_cpu_tensors_without_interpreter_get_a_clear_error():
    import torch

    from learner import fused_logprobs

    if fused_logprobs.triton.knobs.runtime.interpret:
        pytest.fail("TRITON_INTERPRET is set in the test process; this test checks the error "
                    "without it")
    with pytest.raises(RuntimeError, match="learner.logprob_impl=torch"):
        fused_logprobs.tempered_stats(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long),
                                      torch.ones(1))


def test_auto_picks_torch_for_cpu_logits():
    import torch

    from learner.logprobs import resolve_impl

    assert resolve_impl("auto", torch.zeros(1, 1, 3)) == "torch"
    assert resolve_impl("triton", torch.zeros(1, 1, 3)) == "triton"
    with pytest.raises(ValueError, match="learner.logprob_impl"):
        resolve_impl("cuda", torch.zeros(1, 1, 3))


if __name__ == "__main__":
    print(json.dumps({c.__name__: c() for c in CHECKS}))
