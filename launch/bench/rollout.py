"""``python -m launch.bench rollout``: tokens/s of the rollout engines on the same requests (P
prompts x G responses):

* the IntroLLM head vs a fixed temperature in the SAME engine instance (the strategy is swapped
  with ``set_strategy`` between repetitions), target: the head costs <= 2 % of tokens/s;
* vLLM vs transformers on the same requests, per strategy (fixed: the plain engine comparison);
* the vLLM engine's shapes (``vllm-process``: engine core in its own process, ``vllm-tp2``: two
  tensor-parallel ranks) against the default in-process one;
* the share of generate time spent in ``strategy.select`` (the head's forward, its draws, log pi);
* the host's microseconds per decode step of the per-token-temperature path at N rows
  (``--host-rows``, ``launch.bench.host_step``: hidden size and vocabulary 8, so that what is
  timed is the host's work, which on a GPU must stay below the device's step time);
* with ``--baseline REF``, all of it again for another commit's code (a temporary git worktree,
  ``launch.bench.baseline``), interleaved round by round with this tree's arms: today's path beside
  the new one in one run.

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
import contextlib
import functools
import json
import os
import subprocess
from pathlib import Path

from launch.bench.baseline import worktree
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
    split_list,
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
    p.add_argument("--host-rows", default="8,64,256",
                   help="rows per decode step for the host-microseconds table ('' = skip it)")
    p.add_argument("--baseline", default=None, metavar="REF",
                   help="also run every arm with the code of git commit REF (e.g. HEAD~3; or a "
                   "folder holding another checkout), interleaved with this tree's; its arm "
                   "names end in @base")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=bench_rollout)


ROLLOUT_ENGINES = {
    "vllm": dict(engine="vllm", engine_core="inproc"),
    "vllm-process": dict(engine="vllm", engine_core="process"),
    "vllm-tp2": dict(engine="vllm", engine_core="inproc", tensor_parallel_size=2),
    "hf": dict(engine="hf"),
}
"""--engines names -> RolloutConfig fields. Model runner V2 has no arm: on CPU it runs only under
Triton's interpreter (a test stub), a correctness path, not a speed figure."""


def bench_rollout(args) -> dict:
    engines = split_list(args.engines, tuple(ROLLOUT_ENGINES), "--engines")
    strategies = split_list(args.strategies, ("introllm", "fixed"), "--strategies")
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
                "seed": args.seed, "baseline": args.baseline}
    spec = {"model": model, "engines": {e: ROLLOUT_ENGINES[e] for e in engines},
            "strategies": strategies, "prompt_ids": prompt_ids, "group": args.group,
            "seed": args.seed, "temperature": args.temperature,
            "max_new_tokens": args.max_new_tokens, "max_prompt_tokens": args.max_prompt_tokens,
            "hf_batch_size": args.hf_batch_size, "max_num_seqs": args.max_num_seqs}
    machine = machine_info()
    print_block("machine", machine)
    print_block("settings", settings)
    with contextlib.ExitStack() as stack:
        tree = None
        if args.baseline:
            tree, settings["baseline_commit"] = stack.enter_context(worktree(args.baseline))
        host = _host_steps(args, strategies, tree)
        arms, settings["engine_start_s"] = _arms(spec, tree, stack)
        print(f"engines started in {settings['engine_start_s']} s; timing {len(arms)} arms, "
              f"{args.warmup} warm-up + {args.reps} rounds")
        samples = interleaved(arms, args.reps, args.warmup, progress=print)
    machine["load_avg_1m_end"] = machine_info().get("load_avg_1m")
    result = {"benchmark": "rollout", "machine": machine, "settings": settings,
              "arms": {k: {"tok_s": summarize(rates(v)).as_dict(),
                           "tok_cpu_s": summarize(rates(v, per="cpu_seconds")).as_dict(),
                           "samples": v}
                       for k, v in samples.items()},
              "ratios": _rollout_ratios(samples, engines, strategies, tree is not None),
              "host_step": host}
    print(f"\nload average (1 min) at start {machine.get('load_avg_1m')}, at end "
          f"{machine['load_avg_1m_end']}\n")
    print(_rollout_tables(result))
    return result


def _host_steps(args, strategies: list[str], base_tree) -> dict:
    """{"this": [...], "base": [...]}: the decode step's host microseconds per row count
    (``launch.bench.host_step``), for this tree and the baseline's."""
    rows = ",".join(r.strip() for r in args.host_rows.split(",") if r.strip())
    if not rows:
        return {}
    from launch.bench import host_step
    from launch.bench.baseline import run_in_tree

    argv = ["--rows", rows, "--strategies", ",".join(strategies)]
    out = {"this": host_step.main(argv)}
    if base_tree is not None:
        out["base"] = run_in_tree(base_tree, Path(host_step.__file__), *argv)
    return out


def _arms(spec: dict, base_tree, stack) -> tuple[list, dict]:
    """This tree's arms (``launch.bench.rollout_arms``, in this process) and, with a baseline
    tree, the same arms served by a child process over it (names ending in ``@base``); the
    engines are closed by ``stack``."""
    from launch.bench import rollout_arms

    opened: list = []
    stack.callback(lambda: [e.close() for e in opened if hasattr(e, "close")])
    local, start = rollout_arms.build_arms(spec, opened)
    arms = [Arm(name, run, setup) for name, (setup, run) in local.items()]
    if base_tree is not None:
        child = stack.enter_context(_ArmsChild(base_tree, spec))
        start.update({f"{k}@base": v for k, v in child.start.items()})
        arms += [Arm(f"{name}@base", functools.partial(child.run, name)) for name in child.arms]
    return arms, start


class _ArmsChild:
    """``launch.bench.rollout_arms`` served by a child process over another tree."""

    def __init__(self, tree, spec: dict):
        from launch.bench import rollout_arms
        from launch.bench.baseline import child_command

        argv, env = child_command(tree, Path(rollout_arms.__file__))
        self._mark = rollout_arms.MARK
        self._proc = subprocess.Popen(argv, cwd=tree, env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        ready = self._call(spec)
        self.arms, self.start = ready["arms"], ready["engine_start_s"]

    def _call(self, message: dict) -> dict:
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()
        for line in self._proc.stdout:
            if line.startswith(self._mark):
                return json.loads(line[len(self._mark):])
        raise RuntimeError(f"the baseline's arms process ended (exit {self._proc.wait()})")

    def run(self, arm: str, r: int) -> dict:
        return self._call({"arm": arm, "round": r})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._proc.stdin.close()
        self._proc.wait(timeout=120)


CLOCKS = {"wall": "seconds", "cpu": "cpu_seconds"}
"""the two time bases every rollout rate and ratio is reported in"""


def _rollout_ratios(samples, engines, strategies, baseline: bool = False) -> dict:
    """{comparison: {clock: compare(...)}} for head / fixed per engine (and per engine under the
    baseline's code), vllm / hf per strategy, each shape / vllm, and this tree / the baseline per
    arm."""
    pairs = []
    if {"introllm", "fixed"} <= set(strategies):
        pairs += [(f"{e}: introllm / fixed", f"{e}:introllm", f"{e}:fixed") for e in engines]
        if baseline:
            pairs += [(f"{e}: introllm / fixed @base", f"{e}:introllm@base", f"{e}:fixed@base")
                      for e in engines]
    if baseline:
        pairs += [(f"{e}:{s}: this / @base", f"{e}:{s}", f"{e}:{s}@base") for e in engines
                  for s in strategies]
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
    host = result.get("host_step") or {}
    if host:
        base = {(h["strategy"], h["rows"]): h for h in host.get("base", [])}
        table = Table(["strategy", "rows", "host us/step median", "IQR", "us/row",
                       *(["@base us/step", "@base us/row"] if base else [])],
                      title="the decode step's per-token-temperature path, host microseconds "
                            "(hidden size and vocabulary 8: the arithmetic is negligible)")
        for h in host["this"]:
            b = base.get((h["strategy"], h["rows"]))
            table.add(h["strategy"], h["rows"], f"{h['us_median']:.0f}",
                      f"{h['us_q3'] - h['us_q1']:.0f}", f"{h['us_per_row_median']:.2f}",
                      *([f"{b['us_median']:.0f}", f"{b['us_per_row_median']:.2f}"] if b else []))
        out += ["", table.render()]
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
