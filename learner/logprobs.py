"""Token log-probabilities and entropies under per-token temperature, chunked over tokens.

THE invariant of the project (ALGORITHMS.md §1): every log-prob uses the temperature that
sampled the token,

    log pi_theta(y_t | x, y_<t, tau_t) = log_softmax(z_t / tau_t)[y_t],

and a scalar temperature is the special case tau_t = T. All functions here flatten (B, T) to
B*T rows and walk over them `chunk_size` rows at a time, so the largest temporary is one
(chunk, V) tensor, never another full (B, T, V) copy. Maths runs in fp32 (fp64 if the logits are).

Also TAMPO's candidate log-likelihoods l_k (ALGORITHMS.md §3, step 2), computed from the same
logits as the old-log-prob pass with the same per-chunk primitive.

Dimension vocabulary: B responses, T response tokens, V vocab, K candidate temperatures.
"""

from __future__ import annotations

import torch
from torch import Tensor

DEFAULT_CHUNK = 512  # (our default) rows per chunk: one (512, 151936) fp32 temporary = 311 MB


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _tempered_log_softmax(chunk: Tensor, tau: Tensor | float | None) -> Tensor:
    """log_softmax(chunk / tau) for one chunk: chunk (c, V), tau (c,) / float / None -> (c, V)."""
    x = chunk.to(_compute_dtype(chunk))
    if isinstance(tau, Tensor):
        x = x / tau.to(x.dtype)[:, None]
    elif tau is not None:
        x = x / tau
    return torch.log_softmax(x, dim=-1)


def _tempered_logprob(chunk: Tensor, tokens: Tensor, tau: Tensor | float | None) -> Tensor:
    """log_softmax(chunk / tau)[tokens] for one chunk: chunk (c, V), tokens (c,), tau (c,) -> (c,)."""
    return _tempered_log_softmax(chunk, tau).gather(-1, tokens[:, None]).squeeze(-1)


def _flatten(logits: Tensor, response_mask: Tensor | None, tokens: Tensor | None = None,
             tau: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(B, T, V) -> (B*T, V); padded tokens -> 0 and padded tau -> 1 so garbage there stays finite."""
    flat = logits.reshape(-1, logits.shape[-1])  # (B*T, V)
    if tokens is not None:
        tokens = tokens.reshape(-1).long()
        if response_mask is not None:
            tokens = torch.where(response_mask.reshape(-1).bool(), tokens, torch.zeros_like(tokens))
    if tau is not None:
        tau = tau.reshape(-1)
        if response_mask is not None:
            tau = torch.where(response_mask.reshape(-1).bool(), tau, torch.ones_like(tau))
    return flat, tokens, tau


def token_logprobs(logits: Tensor, tokens: Tensor, tau: Tensor | float | None,
                   chunk_size: int = DEFAULT_CHUNK, response_mask: Tensor | None = None) -> Tensor:
    """(B, T) log_softmax(logits / tau)[tokens], differentiable in `logits`.

    logits (B, T, V) untempered; tokens (B, T) long; tau (B, T) per-token temperature, or a float
    (scalar temperature), or None (untempered). With `response_mask` (B, T), padded positions
    get token 0 and tau 1 so that garbage there cannot produce NaN gradients.
    """
    B, T, _ = logits.shape
    tau_t = tau.expand(B, T) if isinstance(tau, Tensor) else None
    flat, flat_tokens, flat_tau = _flatten(logits, response_mask, tokens, tau_t)
    out = []
    for start in range(0, flat.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        chunk_tau = flat_tau[sl] if flat_tau is not None else tau
        out.append(_tempered_logprob(flat[sl], flat_tokens[sl], chunk_tau))
    return torch.cat(out).view(B, T)


def token_entropy(logits: Tensor, tau: Tensor | float | None = None,
                  chunk_size: int = DEFAULT_CHUNK, response_mask: Tensor | None = None) -> Tensor:
    """(B, T) entropy (nats) of softmax(logits / tau); tau None -> of the untempered distribution."""
    B, T, _ = logits.shape
    tau_t = tau.expand(B, T) if isinstance(tau, Tensor) else None
    flat, _, flat_tau = _flatten(logits, response_mask, None, tau_t)
    out = []
    for start in range(0, flat.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        logp = _tempered_log_softmax(flat[sl], flat_tau[sl] if flat_tau is not None else tau)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out).view(B, T)


@torch.no_grad()
def tampo_loglik(logits: Tensor, tokens: Tensor, response_mask: Tensor,
                 candidates: Tensor | tuple[float, ...], chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """(B, K) l_k(i) = (1/|y_i|) sum_t log_softmax(z_t / T_k)[y_t] for every candidate T_k.

    logits (B, T, V) from the old-log-prob pass; tokens (B, T); response_mask (B, T). Loops over
    chunks of rows and, inside, over the K candidates, so at most one (chunk, V) temperature-scaled
    tensor and its log_softmax exist at a time: never K copies of (tokens x V). A response with no
    counted token gets l_k = 0 for every k.

    Measured peak (CPU, fp32, 4,096 tokens x 151,936 vocab, K = 10): the logits alone are 2.49 GB;
    peak RSS above them was 0.62 GB with chunk_size 512 (two (512, V) fp32 temporaries of 311 MB:
    the scaled chunk and its log_softmax) and 0.15 GB with chunk_size 128, against 24.9 GB for K
    unchunked tempered copies (4.98 GB for even one). Reproduce with
    `PYTHONPATH=. python tests/test_learner_logprobs_on_cpu.py 4096 151936 10 512`.
    """
    B, T, _ = logits.shape
    cands = torch.as_tensor(candidates, dtype=torch.float64).tolist()  # K python floats
    flat, flat_tokens, _ = _flatten(logits, response_mask, tokens)
    mask = response_mask.reshape(-1).bool()  # (B*T,)
    ll = torch.zeros(flat.shape[0], len(cands), dtype=torch.float64, device=logits.device)  # (B*T, K)
    for start in range(0, flat.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        for k, temp in enumerate(cands):
            ll[sl, k] = _tempered_logprob(flat[sl], flat_tokens[sl], temp).to(torch.float64)
    ll = torch.where(mask[:, None], ll, torch.zeros_like(ll)).view(B, T, -1)  # (B, T, K)
    lengths = response_mask.reshape(B, T).to(torch.float64).sum(-1).clamp_min(1)  # (B,)
    return (ll.sum(1) / lengths[:, None]).to(torch.float32)
