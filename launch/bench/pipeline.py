"""``python -m launch.bench pipeline``: seconds per training step, synchronous vs one step
off-policy (``trainer.off_policy_steps`` 0 and 1), the same work on the same actors.

One real system is set up once (Ray actors: the rollout engine of the experiment, the reward
actor, the DeepSpeed learner, the meta actor; ``+experiment=introllm``, the embedded default,
unless ``--set`` says otherwise). The two arms then take turns, block by block (ABBA order), on
the same trainer: a block is ``--block`` consecutive training steps run with that arm's
``off_policy_steps``. Every block starts with nothing in flight and ends with nothing in flight, so
a one-step-off-policy block pays its pipeline fill once (its first step generates without
overlap), as a run does once at its start.

Reported per arm: seconds per step over whole blocks (fill included), the steady-state seconds
per step (each block's first step left out: what a long run sees), and the generation and
learner seconds inside the steps. The ideal speed-up hides the shorter of generation and update
completely: synchronous s/step / (synchronous s/step - min(generation, learner)), from the
synchronous arm's own steady times (scoring and the weight sync stay on the critical path).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile


def add_pipeline_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="s/step: synchronous vs one step off-policy",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block", type=int, default=4,
                   help="training steps per timed block (even: IntroLLM's phases alternate)")
    p.add_argument("--reps", type=int, default=3, help="counted blocks per arm")
    p.add_argument("--warmup", type=int, default=1, help="uncounted first blocks per arm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra Hydra override, repeatable (e.g. meta=tampo, rollout=hf)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=bench_pipeline)


ARMS = {"synchronous": 0, "1 step off-policy": 1}


def bench_pipeline(args) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.block < 2 or args.reps < 1 or args.warmup < 0:
        raise SystemExit(f"--block ({args.block}) must be >= 2 (a block's first step is the "
                         f"pipeline fill), --reps ({args.reps}) >= 1, --warmup ({args.warmup}) "
                         ">= 0; use e.g. --block 4 --reps 3")
    from launch.bench.harness import (
        Arm,
        Table,
        compose_run,
        interleaved,
        machine_info,
        print_block,
        print_tables,
        summarize,
    )
    from launch.inputs import load_data, resolve_model_path
    from launch.trainer import Trainer

    rounds = (args.warmup + args.reps) * len(ARMS)
    run = compose_run(["+experiment=introllm", f"seed={args.seed}", "trainer.dump_every=0",
                       f"trainer.total_steps={rounds * args.block}", *args.overrides])
    work = tempfile.mkdtemp(prefix="bench_pipeline_")
    model_path = str(resolve_model_path(run))
    train, heldout = load_data(run)
    trainer = Trainer(run, work, model_path, train, heldout[:1])
    trainer.setup()
    block_starts = itertools.count(0, args.block)

    def block(k: int):
        def run_block(_):
            start = next(block_starts)
            trainer.off_policy, trainer.stop_step = k, start + args.block
            rows = [trainer.step(s) for s in range(start, start + args.block)]
            return {"tokens": int(sum(r.get("rollout/gen_tokens", 0) for r in rows)),
                    "step_s": [r["timing_s/step"] for r in rows],
                    "gen_s": [r.get("rollout/gen_s", 0.0) for r in rows],
                    "learner_s": [r.get("timing_s/learner", 0.0) for r in rows],
                    "staleness": [r["rollout/staleness"] for r in rows],
                    "idle_learner": [r["perf/idle_ratio_learner"] for r in rows],
                    "idle_rollout": [r["perf/idle_ratio_rollout"] for r in rows]}
        return run_block

    settings = {"model": model_path, "strategy": run.meta.name, "engine": run.rollout.engine,
                "prompts": run.trainer.prompts_per_step, "group": run.rollout.group_size,
                "max_new_tokens": run.rollout.max_new_tokens, "block": args.block,
                "reps": args.reps, "warmup": args.warmup, "overrides": args.overrides}
    machine = machine_info()
    print_block("machine", machine)
    print_block("settings", settings)
    try:
        samples = interleaved([Arm(name, block(k)) for name, k in ARMS.items()], args.reps,
                              args.warmup, progress=print)
    finally:
        trainer.shutdown()
    table = Table(["arm", "steps", "s/step (blocks)", "s/step steady", "gen s", "learner s",
                   "staleness", "idle learner", "idle rollout"],
                  title=f"seconds per training step, blocks of {args.block} steps (interleaved)")
    out = {}
    for name, blocks in samples.items():
        whole = summarize([b["seconds"] / args.block for b in blocks])
        steady = summarize([s for b in blocks for s in b["step_s"][1:]])
        out[name] = {"s_per_step": whole.median, "steady_s_per_step": steady.median,
                     **{key: _steady_median(blocks, key) for key in (
                         "gen_s", "learner_s", "staleness", "idle_learner", "idle_rollout")}}
        o = out[name]
        table.add(name, whole.n * args.block, f"{whole.median:.2f}", f"{steady.median:.2f}",
                  f"{o['gen_s']:.2f}", f"{o['learner_s']:.2f}", f"{o['staleness']:.0f}",
                  f"{o['idle_learner']:.2f}", f"{o['idle_rollout']:.2f}")
    sync, off = out["synchronous"], out["1 step off-policy"]
    hidden = min(sync["gen_s"], sync["learner_s"])
    ideal = sync["steady_s_per_step"] / max(sync["steady_s_per_step"] - hidden, 1e-9)
    ratios = {"sync / off-policy (blocks)": sync["s_per_step"] / off["s_per_step"],
              "sync / off-policy (steady)": sync["steady_s_per_step"] / off["steady_s_per_step"],
              "ideal: sync / (sync - min(gen, learner))": ideal}
    rt = Table(["ratio", "value", "target"], title="speed-up of one step off-policy")
    for key, value in ratios.items():
        rt.add(key, f"{value:.2f}x", ">= 1.5x" if "steady" in key else "")
    print_tables(table, rt)
    return {"benchmark": "pipeline", "machine": machine, "settings": settings, "arms": out,
            "ratios": ratios, "samples": samples}


def _steady_median(blocks: list[dict], key: str) -> float:
    """The median of a per-step value over every block's steps but its first (the fill)."""
    from launch.bench.harness import summarize

    return summarize([x for b in blocks for x in b[key][1:]]).median
