"""Token log-probabilities and entropies under per-token temperature, chunked over tokens.

THE invariant of the project (docs/algorithms.md §1): every log-prob uses the temperature that
sampled the token,

    log pi_theta(y_t | x, y_<t, tau_t) = log_softmax(z_t / tau_t)[y_t],

and a scalar temperature is the special case tau_t = T. All functions here flatten (B, T) to
B*T rows and walk over them `chunk_size` rows at a time, so the largest temporary is one
(chunk, V) tensor, never another full (B, T, V) copy. Maths runs in fp32 (fp64 if the logits are).

Also TAMPO's candidate log-likelihoods l_k (docs/algorithms.md §3, step 2), computed from the same
logits as the old-log-prob pass with the same per-chunk primitive.

Two implementations (`impl`): "torch", the chunked reference above (the CPU path), and
"triton", `learner.fused_logprobs`: one pass over the logits for every temperature at once (the
GPU path; tested against the reference on CPU through Triton's interpreter). "auto" picks triton
for CUDA logits when triton is installed, torch otherwise.

Dimension vocabulary: B responses, T response tokens, V vocab, K candidate temperatures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from learner import fused_logprobs
from learner.config import LOGPROB_CHUNK

IMPLS = ("auto", "torch", "triton")

DEFAULT_CHUNK = LOGPROB_CHUNK  # learner.logprob_chunk's default, defined once in learner.config


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def resolve_impl(impl: str, logits: Tensor) -> str:
    """"auto" -> "triton" for CUDA logits with triton installed, else "torch"."""
    if impl not in IMPLS:
        raise ValueError(f"logprob impl {impl!r} is not one of {IMPLS}; set learner.logprob_impl")
    if impl == "auto":
        return "triton" if logits.is_cuda and fused_logprobs.available() else "torch"
    return impl


def _tempered_log_softmax(chunk: Tensor, tau: Tensor | float | None) -> Tensor:
    """log_softmax(chunk / tau) for one chunk: chunk (c, V), tau (c,) / float / None -> (c, V)."""
    x = chunk.to(_compute_dtype(chunk))
    if isinstance(tau, Tensor):
        x = x / tau.to(x.dtype)[:, None]
    elif tau is not None:
        x = x / tau
    return torch.log_softmax(x, dim=-1)


def _tempered_logprob(chunk: Tensor, tokens: Tensor, tau: Tensor | float | None) -> Tensor:
    """log_softmax(chunk / tau)[tokens] for one chunk: chunk (c, V), tokens (c,), tau (c,) ->
    (c,)."""
    return _tempered_log_softmax(chunk, tau).gather(-1, tokens[:, None]).squeeze(-1)


def _flatten(logits: Tensor, response_mask: Tensor | None, tokens: Tensor | None = None,
             tau: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(B, T, V) -> (B*T, V); padded tokens -> 0 and padded tau -> 1 so garbage there stays
    finite."""
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
                   chunk_size: int = DEFAULT_CHUNK, response_mask: Tensor | None = None,
                   impl: str = "torch") -> Tensor:
    """(B, T) log_softmax(logits / tau)[tokens], differentiable in `logits`.

    logits (B, T, V) untempered; tokens (B, T) long; tau (B, T) per-token temperature, or a float
    (scalar temperature), or None (untempered). With `response_mask` (B, T), padded positions
    get token 0 and tau 1 so that garbage there cannot produce NaN gradients.
    """
    B, T, _ = logits.shape
    tau_t = tau.expand(B, T) if isinstance(tau, Tensor) else None
    flat, flat_tokens, flat_tau = _flatten(logits, response_mask, tokens, tau_t)
    if resolve_impl(impl, logits) == "triton":
        if flat_tau is None:
            flat_tau = torch.full((B * T,), 1.0 if tau is None else float(tau),
                                  device=logits.device)
        return fused_logprobs.TemperedLogprob.apply(flat, flat_tokens, flat_tau.detach()).view(B, T)
    out = []
    for start in range(0, flat.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        chunk_tau = flat_tau[sl] if flat_tau is not None else tau
        out.append(_tempered_logprob(flat[sl], flat_tokens[sl], chunk_tau))
    return torch.cat(out).view(B, T)


def token_entropy(logits: Tensor, tau: Tensor | float | None = None,
                  chunk_size: int = DEFAULT_CHUNK, response_mask: Tensor | None = None) -> Tensor:
    """(B, T) entropy (nats) of softmax(logits / tau); tau None -> of the untempered
    distribution."""
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
    ll = torch.zeros(flat.shape[0], len(cands), dtype=torch.float64,
                     device=logits.device)  # (B*T, K)
    for start in range(0, flat.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        for k, temp in enumerate(cands):
            ll[sl, k] = _tempered_logprob(flat[sl], flat_tokens[sl], temp).to(torch.float64)
    return _response_mean(ll.view(B, T, -1), response_mask)


def _response_mean(ll: Tensor, response_mask: Tensor) -> Tensor:
    """(B, K) mean over each response's counted tokens of ll (B, T, K); 0 for an empty response."""
    mask = response_mask.bool()[..., None]
    zero = torch.zeros((), dtype=torch.float64, device=ll.device)
    ll = torch.where(mask, ll.to(torch.float64), zero)
    lengths = response_mask.to(torch.float64).sum(-1).clamp_min(1)  # (B,)
    return (ll.sum(1) / lengths[:, None]).to(torch.float32)


@torch.no_grad()
def old_pass_stats(logits: Tensor, tokens: Tensor, tau: Tensor, response_mask: Tensor,
                   candidates: Tensor | tuple[float, ...] | None = None,
                   chunk_size: int = DEFAULT_CHUNK, impl: str = "torch") -> dict[str, Tensor]:
    """Everything the no-grad old-log-prob pass takes from one micro-batch's logits (B, T, V):

    old_logp (B, T) log_softmax(z / tau)[y], entropy (B, T) of softmax(z / tau),
    entropy_untempered (B, T) of softmax(z), and loglik (B, K) TAMPO's l_k when `candidates`
    are given. impl "triton" reads the logits once for all of them (columns 1/tau, 1, 1/T_k of
    `fused_logprobs.tempered_stats`); "torch" is the chunked reference, one pass per quantity.
    """
    B, T, _ = logits.shape
    if resolve_impl(impl, logits) == "torch":
        out = {"old_logp": token_logprobs(logits, tokens, tau, chunk_size, response_mask),
               "entropy": token_entropy(logits, tau, chunk_size, response_mask),
               "entropy_untempered": token_entropy(logits, None, chunk_size, response_mask)}
        if candidates is not None:
            out["loglik"] = tampo_loglik(logits, tokens, response_mask, candidates, chunk_size)
        return out
    flat, flat_tokens, flat_tau = _flatten(logits, response_mask, tokens, tau.expand(B, T))
    inv = [1.0 / flat_tau.to(torch.float32)[:, None], torch.ones(B * T, 1, device=logits.device)]
    if candidates is not None:  # (B*T, K) the same 1/T_k on every row
        cands = torch.as_tensor(candidates, dtype=torch.float32, device=logits.device)
        inv.append((1.0 / cands)[None, :].expand(B * T, -1))
    logp, ent, _ = fused_logprobs.tempered_stats(flat, flat_tokens, torch.cat(inv, 1))
    out = {"old_logp": logp[:, 0].view(B, T), "entropy": ent[:, 0].view(B, T),
           "entropy_untempered": ent[:, 1].view(B, T)}
    if candidates is not None:
        out["loglik"] = _response_mean(logp[:, 2:].view(B, T, -1), response_mask)
    return out
