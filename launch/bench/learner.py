"""``python -m launch.bench learner``: the learner's step costs on one batch, in interleaved rounds.

One DeepSpeed learner (CPU) on a batch the transformers engine generates with the IntroLLM head
(random 0/1 rewards, GRPO advantages): the theta step (one pass: the update's forward gives the
old log-probs, the default with ``learner.mini_batches=1``), the theta step with a separate
old-log-prob pass (``mini_batches > 1``), the phi step (update of the head only), and the
old-log-prob pass with and without TAMPO's l_k for K candidate temperatures. Targets: l_k <= 5 %
of a theta step; a phi step well under half a theta step.
"""

from __future__ import annotations

import argparse
import os

from launch.bench.harness import (
    Arm,
    Table,
    candidate_temperatures,
    eval_prompt_ids,
    fmt_rate,
    interleaved,
    machine_info,
    print_block,
    print_tables,
    summarize,
)


def add_learner_parser(sub) -> None:
    p = sub.add_parser("learner", help="learner step costs: theta vs phi phase, TAMPO's l_k share",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local HF folder (default: the embedded model)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--candidates", type=int, default=10, help="K TAMPO temperatures in [0.6, 1.5]")
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory", action="store_true",
                   help="instead: peak memory per rank at start-up / theta step / save and the "
                   "seconds of save, verify and resume (--ranks ranks), per setting and size "
                   "(launch.bench.learner_memory)")
    p.add_argument("--sizes", default="0.1,0.25", help="--memory: random models (tiny, 0.1, 0.25)")
    p.add_argument("--settings", default="zero0,zero2,zero3,zero3+gc,zero3+offload",
                   help="--memory: comma list of learner settings (learner_memory.SETTINGS)")
    p.add_argument("--tokens", type=int, default=128, help="--memory: response tokens")
    p.add_argument("--ranks", type=int, default=2, help="--memory: learner ranks")
    p.add_argument("--baseline", default=None, metavar="REF",
                   help="--memory: also run the settings REF's code has (zero0/2/3) over a git "
                   "worktree of REF, setting by setting beside this tree's")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=bench_learner)


def bench_learner(args) -> dict:
    if args.memory:
        return bench_learner_memory(args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from launch.build_model import ensure_tiny_model
    from launch.config import LearnerConfig, PhiTrainingConfig
    from learner.core_algos import compute_grpo_advantages
    from learner.worker import LearnerWorker
    from meta import build_strategy
    from rollout.base import RolloutRequest
    from rollout.hf_engine import HFEngine

    model = str(args.model or ensure_tiny_model())
    prompt_ids = eval_prompt_ids(model, args.prompts, args.seed, max_prompt_tokens=128)
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(model).hidden_size
    torch.manual_seed(args.seed)
    strategy = build_strategy("introllm", hidden_size=hidden)
    engine = HFEngine.from_path(model, strategy, max_new_tokens=args.max_new_tokens, batch_size=256)
    reqs = [RolloutRequest(ids, g, 1.0) for g, ids in enumerate(prompt_ids)
            for _ in range(args.group)]
    batch = engine.generate(reqs, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    batch.rewards = torch.randint(0, 2, (len(batch),), generator=gen).float()
    batch.advantages = compute_grpo_advantages(batch.rewards, batch.group_index)
    tokens = int(batch.response_mask.sum())
    k = args.candidates
    candidates = candidate_temperatures(k)
    cfg = LearnerConfig(micro_batch_size=args.micro_batch_size, skip_zero_adv=False)
    worker = LearnerWorker(model, cfg, PhiTrainingConfig(), head=strategy.head, seed=args.seed)

    def theta(_):
        worker.update_theta(batch)
        return {"tokens": tokens}

    def theta_two_pass(_):
        worker.update_theta(batch, worker.compute_old_logprobs(batch))
        return {"tokens": tokens}

    def phi(_):
        worker.update_phi(batch)
        return {"tokens": tokens}

    def old(_):
        worker.compute_old_logprobs(batch)
        return {"tokens": tokens}

    def old_lk(_):
        worker.compute_old_logprobs(batch, candidates)
        return {"tokens": tokens}

    arms = [Arm("theta step", theta), Arm("theta step, separate old pass", theta_two_pass),
            Arm("phi step", phi), Arm("old logp", old),
            Arm("old logp + l_k", old_lk)]
    settings = {"model": model, "responses": len(batch), "response_tokens": tokens,
                "candidates": k, "micro_batch_size": args.micro_batch_size, "reps": args.reps,
                "warmup": args.warmup}
    machine = machine_info()
    print_block("machine", machine)
    print_block("settings", settings)
    samples = interleaved(arms, args.reps, args.warmup, progress=print)
    med = {name: summarize([x["seconds"] for x in v]).median for name, v in samples.items()}
    lk_s = max(0.0, med["old logp + l_k"] - med["old logp"])
    ratios = {"l_k / theta step": lk_s / med["theta step"],
              "phi step / theta step": med["phi step"] / med["theta step"],
              "theta step / with separate old pass":
                  med["theta step"] / med["theta step, separate old pass"]}
    table = Table(["arm", "reps", "s median", "s min-max", "tokens/s"],
                  title="learner work per batch (interleaved rounds)")
    for name, v in samples.items():
        sm = summarize([x["seconds"] for x in v])
        table.add(name, sm.n, f"{sm.median:.3f}", f"{sm.min:.3f} - {sm.max:.3f}",
                  fmt_rate(tokens / sm.median))
    out = Table(["ratio (median seconds)", "value", "target"], title="ratios")
    out.add("TAMPO l_k (K=%d) / theta step" % k, f"{100 * ratios['l_k / theta step']:.1f} %",
            "<= 5 %")
    out.add("phi step / theta step", f"{100 * ratios['phi step / theta step']:.1f} %",
            "well under 50 %")
    out.add("theta step: one pass / separate old pass",
            f"{100 * ratios['theta step / with separate old pass']:.1f} %", "")
    print_tables(table, out)
    return {"benchmark": "learner", "machine": machine, "settings": settings,
            "median_seconds": med, "ratios": ratios, "samples": samples}



def bench_learner_memory(args) -> dict:
    """``--memory``: ``launch.bench.learner_memory`` per size and setting, this tree and (with
    ``--baseline``) REF's, one after the other."""
    import contextlib
    from pathlib import Path

    from launch.bench import learner_memory
    from launch.bench.baseline import run_in_tree, worktree
    from launch.bench.harness import RANDOM_MODELS, model_bytes, random_model, split_list

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sizes = split_list(args.sizes, tuple(RANDOM_MODELS), "--sizes")
    settings = split_list(args.settings, tuple(learner_memory.SETTINGS), "--settings")
    opts = ["--ranks", str(args.ranks), "--prompts", "4", "--group", "2", "--tokens",
            str(args.tokens), "--micro-batch-size", "4"]
    machine = machine_info()
    print_block("machine", machine)
    results = {}
    with contextlib.ExitStack() as stack:
        tree = stack.enter_context(worktree(args.baseline)) if args.baseline else None
        for size in sizes:
            model = str(random_model(size))
            results[size] = {"model": model, "model_bytes": model_bytes(model), "this": {},
                             "base": {}}
            for setting in settings:
                print(f"{size}B {setting} ...", flush=True)
                results[size]["this"][setting] = learner_memory.main([model, setting, *opts])
                if tree is not None and setting in ("zero0", "zero2", "zero3"):
                    results[size]["base"][setting] = run_in_tree(
                        tree[0], Path(learner_memory.__file__), model, setting, *opts)
    table = Table(["size", "setting", "code", "model load / S", "load resident / S",
                   "start-up / S", "theta step / S",
                   "save / S", "save s", "verify s", "resume s", "checkpoint / S"],
                  title=f"per rank (max over {args.ranks} ranks): peak private memory over the "
                        "rank's baseline, in units of S (the model's bytes); load resident: with "
                        "the file-backed pages the rank read")
    for size, r in results.items():
        S = r["model_bytes"]
        for code in ("this", "base"):
            for setting, m in r[code].items():
                peak = {k: max(x[k] for x in m["ranks"]) / S
                        for k in ("load_peak", "startup_peak", "step_peak", "save_peak")}
                resident = max(x.get("load_resident", float("nan")) for x in m["ranks"]) / S
                table.add(size, setting, code if code == "this" else "@base",
                          f"{peak['load_peak']:.2f}", f"{resident:.2f}",
                          f"{peak['startup_peak']:.2f}",
                          f"{peak['step_peak']:.2f}",
                          f"{peak['save_peak']:.2f}", f"{m['save_s']:.2f}",
                          f"{m['verify_s']:.2f}", f"{m['resume_s']:.2f}",
                          f"{m['checkpoint_bytes'] / S:.2f}")
    print_tables(table)
    return {"benchmark": "learner-memory", "machine": machine,
            "settings": {"sizes": sizes, "settings": settings, "options": opts,
                         "baseline": args.baseline}, "sizes": results}
