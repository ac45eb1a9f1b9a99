"""``python -m launch.bench rollout``: tokens/s of the rollout engines on the same requests (P
prompts x G responses):

* the IntroLLM head vs a fixed temperature in the SAME engine instance (the strategy is swapped
  with ``set_strategy`` between repetitions), target: the head costs <= 2 % of tokens/s;
* vLLM vs transformers on the same requests, per strategy (fixed: the plain engine comparison);
* the vLLM engine's shapes (``vllm-process``: engine core in its own process, ``vllm-tp2``: two
  tensor-parallel ranks) against the default in-process one;
* the share of generate time spent in ``strategy.select`` (the head's forward, its draws, log pi).

How the numbers are taken (``launch.bench.harness.interleaved``): one uncounted warm-up round
runs every arm, then ``--reps`` rounds run every arm once each, in the order A B C, C B A,
A B C, ... (a linear drift of a shared machine's load hits every arm alike); every arm of a round
uses the same seed. Each arm reports the median tokens/s with min-max and IQR over rounds; a
comparison reports the ratio of medians and the median (min-max) of the per-round ratios, which
pairs arms run seconds apart. Tokens/s counts generated tokens (EOS included) over the wall time
of ``engine.generate``, and again over this process's CPU time (``time.process_time``): on a
shared machine other work steals wall time from single arms, much less so CPU time (``cpu/wall``
< 1 shows the theft).
"""

from __future__ import annotations

import argparse
import os
import time

from launch.bench.harness import (
    Arm,
    Table,
    compare,
    eval_prompt_ids,
    fmt_rate,
    interleaved,
    machine_info,
    print_block,
    rates,
    summarize,
)


def add_rollout_parser(sub) -> None:
    p = sub.add_parser("rollout", help="engine tokens/s: IntroLLM head vs fixed tau, vLLM vs hf",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="local Hugging Face folder (default: the embedded tiny model)")
    p.add_argument("--engines", default="vllm,hf",
                   help="comma list of " + ", ".join(ROLLOUT_ENGINES) + " (vllm-* are the vLLM "
                   "engine's shapes, compared with plain vllm: the CPU default, its engine core "
                   "in this process, model runner V1, one rank)")
    p.add_argument("--strategies", default="introllm,fixed",
                   help="comma list of introllm, fixed: the arms run in every engine")
    p.add_argument("--reps", type=int, default=5, help="counted rounds (after the warm-up)")
    p.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    p.add_argument("--prompts", type=int, default=64, help="P prompts (eval split)")
    p.add_argument("--group", type=int, default=8, help="G responses per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-prompt-tokens", type=int, default=128,
                   help="prompts keep their last N tokens (as the trainer does)")
    p.add_argument("--temperature", type=float, default=1.0, help="the fixed arm's temperature")
    p.add_argument("--hf-batch-size", type=int, default=64, help="transformers engine batch")
    p.add_argument("--max-num-seqs", type=int, default=256, help="vLLM engine batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=bench_rollout)


def _split(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if not items or bad:
        raise SystemExit(f"{flag} ({value!r}) must be a comma list of {', '.join(allowed)}; "
                         f"e.g. {flag} {','.join(allowed)}")
    return list(dict.fromkeys(items))


ROLLOUT_ENGINES = {
    "vllm": dict(engine="vllm", engine_core="inproc"),
    "vllm-process": dict(engine="vllm", engine_core="process"),
    "vllm-tp2": dict(engine="vllm", engine_core="inproc", tensor_parallel_size=2),
    "hf": dict(engine="hf"),
}
"""--engines names -> RolloutConfig fields. Model runner V2 has no arm: on CPU it runs only under
Triton's interpreter (a test stub), a correctness path, not a speed figure."""


def bench_rollout(args) -> dict:
    engines = _split(args.engines, tuple(ROLLOUT_ENGINES), "--engines")
    strategies = _split(args.strategies, ("introllm", "fixed"), "--strategies")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from launch.build_model import ensure_tiny_model

    model = str(args.model or ensure_tiny_model())
    prompt_ids = eval_prompt_ids(model, args.prompts, args.seed, args.max_prompt_tokens)
    settings = {"model": model, "engines": engines, "strategies": strategies,
                "prompts": args.prompts, "group": args.group,
                "responses": args.prompts * args.group, "max_new_tokens": args.max_new_tokens,
                "prompt_tokens_mean": round(sum(map(len, prompt_ids)) / len(prompt_ids), 1),
                "reps": args.reps, "warmup": args.warmup, "fixed_temperature": args.temperature,
                "hf_batch_size": args.hf_batch_size, "vllm_max_num_seqs": args.max_num_seqs,
                "seed": args.seed}
    machine = machine_info()
    print_block("machine", machine)
    print_block("settings", settings)
    opened: list = []
    try:
        arms, settings["engine_start_s"] = _rollout_arms(args, model, prompt_ids, engines,
                                                         strategies, opened)
        print(f"engines started in {settings['engine_start_s']} s; timing {len(arms)} arms, "
              f"{args.warmup} warm-up + {args.reps} rounds")
        samples = interleaved(arms, args.reps, args.warmup, progress=print)
    finally:
        for engine in opened:
            if hasattr(engine, "close"):
                engine.close()
    machine["load_avg_1m_end"] = machine_info().get("load_avg_1m")
    result = {"benchmark": "rollout", "machine": machine, "settings": settings,
              "arms": {k: {"tok_s": summarize(rates(v)).as_dict(),
                           "tok_cpu_s": summarize(rates(v, per="cpu_seconds")).as_dict(),
                           "samples": v}
                       for k, v in samples.items()},
              "ratios": _rollout_ratios(samples, engines, strategies)}
    print(f"\nload average (1 min) at start {machine.get('load_avg_1m')}, at end "
          f"{machine['load_avg_1m_end']}\n")
    print(_rollout_tables(result))
    return result


def _rollout_arms(args, model, prompt_ids, engines, strategies, opened) -> tuple[list, dict]:
    """One engine per name (built as the trainer builds it), one arm per (engine, strategy);
    each engine's strategies are its own objects. Engines are appended to ``opened``."""
    import torch

    from launch.config import RolloutConfig
    from meta import STRATEGIES, build_strategy
    from rollout.base import RolloutRequest
    from rollout.vllm_overlay import read_config
    from rollout.worker import build_engine

    config = read_config(model)
    hidden = int((config.get("text_config") or config)["hidden_size"])

    def make_strategy(name):  # same seed: every engine's IntroLLM head starts identical
        torch.manual_seed(args.seed)
        if STRATEGIES[name].learns_head:  # --strategies: introllm or fixed
            return build_strategy(name, hidden_size=hidden)
        return build_strategy(name, temperature=args.temperature)

    def requests_for(strategy):
        base = strategy.plan(0, args.prompts).tolist()  # (P,) base tau per prompt
        return [RolloutRequest(ids, g, base[g]) for g, ids in enumerate(prompt_ids)
                for _ in range(args.group)]

    arms, start = [], {}
    for engine_name in engines:
        cfg = RolloutConfig(**ROLLOUT_ENGINES[engine_name], group_size=args.group,
                            max_new_tokens=args.max_new_tokens,
                            max_prompt_tokens=args.max_prompt_tokens,
                            batch_size=args.hf_batch_size, max_num_seqs=args.max_num_seqs)
        own = {s: make_strategy(s) for s in strategies}
        t0 = time.perf_counter()
        engine = build_engine(model, own[strategies[0]], cfg, seed=args.seed)
        opened.append(engine)
        start[engine_name] = round(time.perf_counter() - t0, 1)
        for s in strategies:
            arms.append(_rollout_arm(f"{engine_name}:{s}", engine, own[s],
                                     requests_for(own[s]), args.seed))
    return arms, start


def _rollout_arm(name, engine, strategy, requests, seed) -> Arm:
    """Swap ``strategy`` into ``engine`` (untimed), then time one ``generate`` of ``requests``."""
    def setup():
        engine.set_strategy(strategy)

    def run(r: int) -> dict:
        batch = engine.generate(requests, step=0, seed=seed * 1000 + r)
        out = {"tokens": int(batch.response_mask.sum()),
               "select_s": batch.stats["select_s"],  # timed where select runs (vLLM: its workers)
               "mean_len": float(batch.response_mask.sum(-1).float().mean())}
        if batch.gate is not None:
            out["mean_tau"] = float(batch.tau[batch.response_mask].mean())
        return out

    return Arm(name, run, setup)


CLOCKS = {"wall": "seconds", "cpu": "cpu_seconds"}
"""the two time bases every rollout rate and ratio is reported in"""


def _rollout_ratios(samples, engines, strategies) -> dict:
    """{comparison: {clock: compare(...)}} for head / fixed per engine and vllm / hf per
    strategy."""
    pairs = []
    if {"introllm", "fixed"} <= set(strategies):
        pairs += [(f"{e}: introllm / fixed", f"{e}:introllm", f"{e}:fixed") for e in engines]
    if {"vllm", "hf"} <= set(engines):
        pairs += [(f"{s}: vllm / hf", f"vllm:{s}", f"hf:{s}") for s in strategies]
    if "vllm" in engines:  # each vLLM shape against the default one
        pairs += [(f"{s}: {e} / vllm", f"{e}:{s}", f"vllm:{s}") for e in engines
                  if e.startswith("vllm-") for s in strategies]
    return {name: {clock: compare(samples[a], samples[b], per) for clock, per in CLOCKS.items()}
            for name, a, b in pairs}


def _rollout_tables(result: dict) -> str:
    arms = Table(["arm", "reps", "tokens/rep", "s/rep", "tok/s median", "tok/s min-max",
                  "tok/s IQR", "tok/cpu-s median", "tok/cpu-s min-max", "cpu/wall", "select %"],
                 title="tokens/s per arm (interleaved rounds; cpu = this process's CPU time)")
    for name, a in result["arms"].items():
        s, tok, cpu = a["samples"], a["tok_s"], a["tok_cpu_s"]
        seconds = summarize([x["seconds"] for x in s]).median
        tokens = summarize([x["tokens"] for x in s]).median
        wall = sum(x["seconds"] for x in s)
        select = 100 * sum(x["select_s"] for x in s) / wall
        arms.add(name, len(s), f"{tokens:,.0f}", f"{seconds:.2f}", fmt_rate(tok["median"]),
                 f"{fmt_rate(tok['min'])} - {fmt_rate(tok['max'])}",
                 fmt_rate(tok["q3"] - tok["q1"]), fmt_rate(cpu["median"]),
                 f"{fmt_rate(cpu['min'])} - {fmt_rate(cpu['max'])}",
                 f"{sum(x['cpu_seconds'] for x in s) / wall:.2f}", f"{select:.2f}")
    out = [arms.render()]
    if result["ratios"]:
        ratios = Table(["comparison (tok/s)", "clock", "ratio of medians", "paired median",
                        "paired min-max", "note"], title="ratios (paired = per round)")
        for name, by_clock in result["ratios"].items():
            for clock, r in by_clock.items():
                p = r["paired"]
                note = head_cost_note(p) if "introllm / fixed" in name else ""
                ratios.add(name, clock, f"{r['ratio_of_medians']:.3f}", f"{p['median']:.3f}",
                           f"{p['min']:.3f} - {p['max']:.3f}", note)
        out += ["", ratios.render()]
    return "\n".join(out)


def head_cost_note(paired: dict, limit: float = 2.0) -> str:
    """The head's cost in % of tokens/s, from the per-round ratios head / fixed, vs ``limit``."""
    cost, best, worst = (100 * (1 - paired[k]) for k in ("median", "max", "min"))
    if worst <= limit:
        verdict = "met in every round"
    elif best > limit:
        verdict = "missed in every round"
    else:
        verdict = (f"{'met' if cost <= limit else 'missed'} at the median, "
                   f"rounds {best:+.1f} to {worst:+.1f} %")
    return f"head costs {cost:+.1f} % (target <= {limit:g} %: {verdict})"
