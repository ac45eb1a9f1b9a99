"""``python -m launch.bench gpu``: learner and head costs at GPU sizes, on random-weight models.

Needs only PyTorch and transformers (triton comes with CUDA PyTorch): no Ray, vLLM, DeepSpeed or
model download. Random-weight Qwen2-shaped models (vocabulary 151,936):

    0.5b: d 896,  24 layers, 14 heads (2 KV), FFN 4,864     (Qwen2.5-0.5B's shape)
    1.5b: d 1536, 28 layers, 12 heads (2 KV), FFN 8,960     (Qwen2.5-1.5B's shape)
    1.7b: d 2048, 28 layers, 16 heads (8 KV), FFN 6,144     (Qwen3-1.7B's shape, for TAMPO's l_k)

Per size, in bf16 (AdamW, fused on CUDA), on ``--batch`` x ``--seq`` tokens:

* theta step: forward, per-token-temperature log-probs of the sampled tokens, a GRPO-shaped loss,
  backward, optimizer step. Tokens/s and model FLOPs utilisation, MFU = model FLOPs / (time x
  peak): model FLOPs = 6 N T + 6 L d S T (N parameters without the input embedding, T tokens,
  L layers, d width, S sequence length: causal attention), peak = ``--peak-tflops`` (default by
  device name: H100/H200 989 dense bf16);
* phi step: the frozen backbone's no-grad forward for h_t, then the temperature head's forward,
  log pi_phi, backward and step (MFU counts 2 N' T without the lm_head + the head's 6 N_head T);
* the head per decode step: one decode step of ``--decode-batch`` sequences with a KV cache of
  ``--decode-context`` tokens, sampled at a fixed temperature vs with the IntroLLM head
  (``IntroLLM.select``, the code the engines run: its forward on h_t, gate and Beta draws,
  log pi_phi, then logits / tau per row), interleaved;
* bf16 numerics: per-token-temperature log-probs of the same tokens from the bf16 model (fp32
  maths over bf16 logits, our path; and all-bf16 maths, for contrast) against the fp32 model.

At ``--lk-size`` (1.7b): TAMPO's l_k for K = ``--candidates`` temperatures as a fraction of a theta
step, chunked torch (`learner.logprobs`, the reference) vs one pass (`learner.fused_logprobs`).

``--tiny`` shrinks every model (d 64, 2 layers, vocabulary 512) so the script runs on a CPU in
seconds: the CI check of this code path. Record GPU results with
``--out results/gpu_<device>.json``.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

SHAPES = {  # hidden, layers, heads, kv heads, ffn
    "0.5b": (896, 24, 14, 2, 4864),
    "1.5b": (1536, 28, 12, 2, 8960),
    "1.7b": (2048, 28, 16, 8, 6144),
}
VOCAB = 151_936
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def add_gpu_parser(sub) -> None:
    p = sub.add_parser("gpu", help="GPU sizes: learner tokens/s + MFU (theta, phi), head per "
                       "decode step, bf16 error, TAMPO l_k share", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.5b,1.5b", help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--lk-size", default="1.7b",
                   help="model size for the l_k measurement ('' = skip)")
    p.add_argument("--batch", type=int, default=4, help="sequences per learner step")
    p.add_argument("--seq", type=int, default=1024, help="tokens per sequence (all response)")
    p.add_argument("--candidates", type=int, default=10, help="K TAMPO temperatures")
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--decode-context", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for MFU")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU check of the script)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=bench_gpu)


def make_model(size: str, tiny: bool, dtype, device):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    d, layers, heads, kv, ffn = (64, 2, 4, 2, 128) if tiny else SHAPES[size]
    cfg = Qwen2Config(vocab_size=512 if tiny else VOCAB, hidden_size=d, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=ffn,
                      max_position_embeddings=8192, tie_word_embeddings=False)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    return model


def _timer(device):
    import torch

    def timed(fn, reps: int, warmup: int) -> list[float]:
        out = []
        for i in range(warmup + reps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                out.append(time.perf_counter() - t0)
        return out

    return timed


def _median(xs: list[float]) -> float:
    from launch.bench.harness import summarize

    return summarize(xs).median


def model_flops_per_token(model, seq: int, train: bool) -> float:
    """theta step (train): forward + backward of the whole model, 6 N + 6 L d S per token;
    phi step: the backbone's forward only (no lm_head), 2 N' + 2 L d S."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    attn = cfg.num_hidden_layers * cfg.hidden_size * seq  # causal: half of 2 L d S per pass
    if train:
        return 6 * n + 6 * attn
    return 2 * (n - model.get_output_embeddings().weight.numel()) + 2 * attn


def bench_size(size: str, args, device, timed, peak: float | None) -> dict:
    import torch

    from learner.logprobs import token_logprobs
    from meta.introllm import TemperatureHead

    g = torch.Generator(device="cpu").manual_seed(args.seed)
    model = make_model(size, args.tiny, torch.bfloat16, device)
    V, d = model.config.vocab_size, model.config.hidden_size
    B, S = args.batch, args.seq
    ids = torch.randint(0, V, (B, S + 1), generator=g).to(device)
    tau = (torch.rand(B, S, generator=g) * 0.9 + 0.6).to(device)
    adv = torch.randn(B, 1, generator=g).to(device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=fused)
    impl = "auto"

    def theta():
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits
        logp = token_logprobs(logits, ids[:, 1:], tau, impl=impl)
        (-(logp * adv).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    head = TemperatureHead(d).to(device)
    hopt = torch.optim.AdamW(head.parameters(), lr=1e-7, fused=fused)
    gate = (torch.rand(B, S, generator=g) < 0.5).float().to(device)
    z = torch.rand(B, S, generator=g).clamp(0.01, 0.99).to(device)
    forced = torch.zeros(B, S, dtype=torch.bool, device=device)
    forced[:, 0] = True

    def phi():
        with torch.no_grad():
            h = model.model(input_ids=ids[:, :-1], use_cache=False).last_hidden_state
        logp = head.log_prob(h, gate, z, forced)
        (-(logp * adv).mean()).backward()
        hopt.step()
        hopt.zero_grad(set_to_none=True)

    tokens = B * S
    out = {"params": sum(p.numel() for p in model.parameters()), "tokens_per_step": tokens}
    for name, fn, train in (("theta", theta, True), ("phi", phi, False)):
        t = _median(timed(fn, args.reps, args.warmup))
        flops = model_flops_per_token(model, S, train) * tokens
        if name == "phi":
            flops += 6 * sum(p.numel() for p in head.parameters()) * tokens
        out[name] = {"s_per_step": t, "tokens_per_s": tokens / t,
                     "mfu": (flops / t / (peak * 1e12)) if peak else None}
    out["phi_over_theta"] = out["phi"]["s_per_step"] / out["theta"]["s_per_step"]
    opt = None  # frees the optimizer state before the decode benchmark
    out["decode"] = bench_decode(model, head, args, device, timed, g)
    out["bf16_error"] = bf16_error(model, args, device, g)
    return out


def bench_decode(model, head, args, device, timed, g) -> dict:
    """One decode step (a token for each of D sequences with a KV cache) with and without the
    head."""
    import torch

    from meta.base import RowContext
    from meta.introllm import IntroLLM

    D, C, V = args.decode_batch, args.decode_context, model.config.vocab_size
    strategy = IntroLLM(model.config.hidden_size)
    strategy.head.load_state_dict(head.state_dict())
    strategy.head.to(device)
    ids = torch.randint(0, V, (D, C), generator=g).to(device)
    with torch.no_grad():
        past = model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values
    nxt = torch.randint(0, V, (D, 1), generator=g).to(device)
    pos = torch.full((D, 1), C, device=device)
    ones = torch.ones(D, device=device)
    rng = torch.Generator(device=device).manual_seed(args.seed)

    @torch.no_grad()
    def step(with_head: bool):
        out = model(input_ids=nxt, past_key_values=past, position_ids=pos, use_cache=True,
                    output_hidden_states=True)  # both arms: the same forward
        past.crop(-1)  # every repetition decodes position C again
        logits = out.logits[:, -1].float()
        if with_head:
            ctx = RowContext(positions=pos[:, 0], prev_tau=ones, base_tau=ones, step=0,
                             hidden=out.hidden_states[-1][:, -1], generator=rng)
            logits = logits / strategy.select(ctx).tau[:, None]
        return torch.multinomial(torch.softmax(logits, -1), 1, generator=rng)

    times = {False: [], True: []}
    for _ in range(args.warmup):
        step(False), step(True)
    for r in range(args.reps * 4):  # A B, B A, ...: drift hits both arms alike
        for arm in ((False, True) if r % 2 == 0 else (True, False)):
            times[arm] += timed(partial(step, arm), 1, 0)
    fixed, learned = _median(times[False]), _median(times[True])
    return {"batch": D, "context": C, "s_fixed": fixed, "s_head": learned,
            "head_overhead": learned / fixed - 1}


def bf16_error(model, args, device, g) -> dict:
    """Per-token-temperature log-probs from the bf16 model vs the same weights in fp32."""
    import copy

    import torch

    from learner.logprobs import token_logprobs

    V = model.config.vocab_size
    B, S = min(2, args.batch), min(512, args.seq)
    ids = torch.randint(0, V, (B, S + 1), generator=g).to(device)
    tau = (torch.rand(B, S, generator=g) * 0.9 + 0.6).to(device)
    with torch.no_grad():
        lb = model(input_ids=ids[:, :-1], use_cache=False).logits  # bf16
        ref_model = copy.deepcopy(model).float()
        lf = ref_model(input_ids=ids[:, :-1], use_cache=False).logits
        del ref_model
        want = token_logprobs(lf, ids[:, 1:], tau)
        ours = token_logprobs(lb, ids[:, 1:], tau)  # fp32 maths over bf16 logits
        all_bf16 = torch.log_softmax(lb / tau[..., None].to(lb.dtype), -1).gather(
            -1, ids[:, 1:, None]).squeeze(-1).float()
    err = lambda x: {"max_abs": float((x - want).abs().max()),  # noqa: E731
                     "mean_abs": float((x - want).abs().mean())}
    return {"tokens": B * S, "bf16_logits_fp32_math": err(ours), "all_bf16": err(all_bf16)}


def bench_lk(args, device, timed) -> dict:
    """TAMPO's l_k over one theta step's logits, torch chunked vs one pass, vs the theta step."""
    import torch

    from learner.logprobs import old_pass_stats, tampo_loglik, token_logprobs

    g = torch.Generator(device="cpu").manual_seed(args.seed)
    model = make_model(args.lk_size, args.tiny, torch.bfloat16, device)
    V, (B, S) = model.config.vocab_size, (args.batch, args.seq)
    ids = torch.randint(0, V, (B, S + 1), generator=g).to(device)
    tau = (torch.rand(B, S, generator=g) * 0.9 + 0.6).to(device)
    mask = torch.ones(B, S, dtype=torch.bool, device=device)
    from launch.bench.harness import candidate_temperatures

    cands = candidate_temperatures(args.candidates)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=device.type == "cuda")

    def theta():
        logp = token_logprobs(model(input_ids=ids[:, :-1], use_cache=False).logits, ids[:, 1:], tau,
                              impl="auto")  # as the main table's theta step
        (-logp.mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_theta = _median(timed(theta, args.reps, args.warmup))
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits
    opt = None  # frees the optimizer state before the l_k timings
    out = {"size": args.lk_size, "tokens": B * S, "candidates": len(cands), "s_theta_step": t_theta}
    t = _median(timed(lambda: tampo_loglik(logits, ids[:, 1:], mask, cands), args.reps, 1))
    out["torch_chunked"] = {"s": t, "fraction_of_theta_step": t / t_theta}
    if device.type == "cuda":
        ref = tampo_loglik(logits, ids[:, 1:], mask, cands)
        fast_fn = lambda: old_pass_stats(logits, ids[:, 1:], tau, mask, cands, impl="triton")  # noqa: E731
        t = _median(timed(fast_fn, args.reps, 1))
        fast = fast_fn()["loglik"]
        out["one_pass"] = {"s": t, "fraction_of_theta_step": t / t_theta,
                           "note": "also gives old_logp and both entropies",
                           "max_abs_diff_vs_torch": float((fast - ref).abs().max())}
    return out


def bench_gpu(args) -> dict:
    import torch

    from launch.bench.harness import Table, machine_info, print_block, print_tables

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("python -m launch.bench gpu needs a CUDA device for the real sizes; "
                         "add --tiny to check the script on a CPU")
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes + ([args.lk_size] if args.lk_size else []):
        if s not in SHAPES:
            raise SystemExit(f"size {s!r} is not one of {list(SHAPES)}; set --sizes / --lk-size")
    torch.manual_seed(args.seed)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    machine = {**machine_info(), "device": name, "peak_tflops_bf16": peak}
    if device.type == "cuda":
        machine["cuda"] = torch.version.cuda
    settings = {k: getattr(args, k) for k in ("sizes", "lk_size", "batch", "seq", "candidates",
                                              "decode_batch", "decode_context", "reps", "tiny")}
    print_block("machine", machine)
    print_block("settings", settings)
    timed = _timer(device)
    results = {s: bench_size(s, args, device, timed, peak) for s in sizes}
    lk = bench_lk(args, device, timed) if args.lk_size else None
    pct = lambda x: "n/a" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    table = Table(["size", "params", "theta tok/s", "theta MFU", "phi tok/s", "phi MFU",
                   "phi / theta", "head / decode step", "bf16 logp max err"],
                  title=f"learner and head at GPU sizes ({name}, bf16)")
    for s, r in results.items():
        table.add(s, f"{r['params'] / 1e6:,.1f}M", f"{r['theta']['tokens_per_s']:,.0f}",
                  pct(r["theta"]["mfu"]), f"{r['phi']['tokens_per_s']:,.0f}", pct(r["phi"]["mfu"]),
                  pct(r["phi_over_theta"]), f"+{pct(r['decode']['head_overhead'])}",
                  f"{r['bf16_error']['bf16_logits_fp32_math']['max_abs']:.4f}")
    tables = [table]
    if lk:
        t2 = Table(["TAMPO l_k", "seconds", "of a theta step"],
                   title=f"l_k, K={lk['candidates']}, {lk['tokens']} tokens, {lk['size']}")
        for key in ("torch_chunked", "one_pass"):
            if key in lk:
                t2.add(key, f"{lk[key]['s']:.4f}", pct(lk[key]["fraction_of_theta_step"]))
        tables.append(t2)
    print_tables(*tables)
    return {"benchmark": "gpu", "machine": machine, "settings": settings, "sizes": results,
            "tampo_lk": lk}
