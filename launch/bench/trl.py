"""``python -m launch.bench trl``: seconds per GRPO training step, this system vs TRL's GRPOTrainer.

Both sides do the same work on the same machine in one process tree, step by step interleaved:
the same model folder (the embedded tiny model by default), P prompts x G responses per step
drawn from the same synthetic training problems, the same max new tokens, temperature 1.0 with no
top-k/top-p, the same GRPO loss settings (clip 0.2 / 0.28, token-mean = TRL's "dapo", group
std-normalised advantages, no KL, one optimizer step per batch, lr and micro-batch size), the same
verifier (``reward.score.correctness``), the same weights dtype. Our learner gets every response,
like TRL's (``learner.skip_zero_adv=false``: the same loss and the same backward work);
``--skip-zero-adv`` times our default instead, which drops zero-advantage responses before the
learner (less work, and token-mean over the kept tokens only).

* ours: ``Trainer.step`` of the real system (Ray actors: the rollout engine of the experiment,
  the reward actor, the DeepSpeed learner, weight sync), with ``+experiment=fixed`` unless
  ``--set`` says otherwise (e.g. ``--set rollout=hf``);
* TRL: ``GRPOTrainer.train()`` on a thread of this process, paused after every optimizer step by
  a callback so that the two never run at the same time; generation is TRL's default
  (``model.generate``). TRL's vLLM mode needs a CUDA vLLM; it is not measured here.

A step is timed from its start to the start of the next step's work (for TRL: logging, the next
batch, generation, loss, backward, optimizer step). Each side's own clocks split it: generation,
rewards, and the rest (log-probs, backward, optimizer, weight sync). TRL runs with
``--threads`` torch threads (default 1, as each of our Ray actors: OMP_NUM_THREADS=1).
Needs the ``bench`` extra (``pip install -e .[bench]``: trl).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading


def add_trl_parser(sub) -> None:
    p = sub.add_parser("trl", help="seconds per GRPO step: this system vs TRL's GRPOTrainer",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=32, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="responses per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--micro-batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--reps", type=int, default=5, help="counted steps per side")
    p.add_argument("--warmup", type=int, default=1, help="uncounted first steps per side (>= 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the TRL side")
    p.add_argument("--skip-zero-adv", action="store_true",
                   help="our default learner.skip_zero_adv=true (not the same work as TRL)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra Hydra override for our side, repeatable (e.g. rollout=hf)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=bench_trl)


def our_config(args, run_dir: str):
    """Our RunConfig for the benchmark (Hydra composition of conf/, as ``launch.run`` does)."""
    from launch.config import compose_run

    return compose_run(["+experiment=fixed", "meta.temperature=1.0", f"seed={args.seed}",
                 f"trainer.prompts_per_step={args.prompts}", f"rollout.group_size={args.group}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", f"learner.lr={args.lr}",
                 f"learner.micro_batch_size={args.micro_batch_size}", "trainer.dump_every=0",
                 f"learner.skip_zero_adv={str(args.skip_zero_adv).lower()}",
                 f"trainer.total_steps={args.warmup + args.reps}",
                 *args.overrides])


class PausedTRL:
    """GRPOTrainer.train() on a thread that stops after every optimizer step until ``step()``."""

    def __init__(self, trainer):
        from transformers import TrainerCallback

        self.trainer, self.error, self.finished = trainer, None, False
        self._go, self._done = threading.Semaphore(0), threading.Semaphore(0)
        outer = self

        class Pause(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                outer._done.release()
                outer._go.acquire()

        trainer.add_callback(Pause())
        self._thread = threading.Thread(target=self._train, name="trl-train", daemon=True)
        self._thread.start()

    def _train(self) -> None:
        self._go.acquire()
        try:
            self.trainer.train()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err
        self.finished = True
        self._done.release()

    def step(self) -> None:
        if self.finished:
            raise RuntimeError("TRL's GRPOTrainer stopped before the benchmark's steps were done "
                               "(fewer training problems than one batch?); lower --reps")
        self._go.release()
        self._done.acquire()
        if self.error is not None:
            raise RuntimeError(f"TRL's GRPOTrainer failed: {self.error!r}") from self.error
        if self.finished:
            raise RuntimeError("TRL's GRPOTrainer ended without another optimizer step; "
                               "lower --reps")

    def finish(self) -> None:
        self._go.release()
        self._thread.join(timeout=120)


def build_trl(args, run, model_path: str, train, out_dir: str):
    """A GRPOTrainer with our settings; returns (trainer, clock)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from data.prompts import render_prompt
    from reward.score import correctness

    tok = AutoTokenizer.from_pretrained(model_path)
    rows = [{"prompt": render_prompt(p, tok, run.data.prompt_template, run.data.instruction),
             "task": p.task, "gold": p.answer, "meta_json": json.dumps(p.meta)} for p in train]

    def verifier(prompts, completions, task, gold, meta_json, **_):
        return [correctness(t, c, g, json.loads(m)) for c, t, g, m in
                zip(completions, task, gold, meta_json)]

    ln = run.learner
    n = args.prompts * args.group
    cfg = GRPOConfig(
        output_dir=out_dir, report_to=[], save_strategy="no", logging_steps=10**6,
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        bf16=run.model.dtype == "bfloat16", fp16=run.model.dtype == "float16", seed=args.seed,
        per_device_train_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=max(1, n // args.micro_batch_size),
        num_generations=args.group, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, learning_rate=ln.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=ln.weight_decay, max_grad_norm=ln.grad_clip,
        beta=0.0, epsilon=ln.clip_low, epsilon_high=ln.clip_high, loss_type="dapo",
        scale_rewards="group" if ln.norm_adv_by_std else "none", num_iterations=1,
        max_steps=args.warmup + args.reps, dataloader_num_workers=0,
        dataloader_pin_memory=False)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, run.model.dtype))
    verifier.__name__ = "correctness"
    trainer = GRPOTrainer(model=model, reward_funcs=[verifier], args=cfg,
                          train_dataset=Dataset.from_list(rows), processing_class=tok)
    from launch.bench.harness import MethodClock

    clock = MethodClock()
    clock.wrap(trainer, "_generate", "gen", count_tokens=lambda out: sum(len(c) for c in out[1]))
    clock.wrap(trainer, "_calculate_rewards", "reward")
    return trainer, clock


def bench_trl(args) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.warmup < 1 or args.reps < 1:
        raise SystemExit(f"--warmup ({args.warmup}) and --reps ({args.reps}) must be >= 1: the "
                         "first step of each side pays its set-up; use e.g. --warmup 1 --reps 5")
    if (args.prompts * args.group) % args.micro_batch_size:
        raise SystemExit(f"--prompts x --group ({args.prompts * args.group}) must be a multiple "
                         f"of --micro-batch-size ({args.micro_batch_size}) so that TRL makes one "
                         "optimizer step per batch as we do; change one of them")
    try:
        import trl  # only checks that TRL is installed
    except ImportError:
        raise SystemExit("python -m launch.bench trl needs TRL: "
                         "pip install -e '.[bench]'") from None
    import torch

    from launch.bench.harness import (
        Arm,
        Table,
        interleaved,
        machine_info,
        print_block,
        print_tables,
        summarize,
    )
    from launch.inputs import load_data, resolve_model_path
    from launch.trainer import Trainer

    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench_trl_")
    run = our_config(args, os.path.join(work, "ours"))
    model_path = str(resolve_model_path(run))
    train, heldout = load_data(run)
    ours = Trainer(run, os.path.join(work, "ours"), model_path, train, heldout[:1])
    trl_trainer, trl_clock = build_trl(args, run, model_path, train, os.path.join(work, "trl"))
    ours.setup()
    paused = PausedTRL(trl_trainer)
    step_no = iter(range(10**9))

    def run_ours(_):
        m = ours.step(next(step_no))
        gen, reward = m.get("rollout/gen_s", 0.0), m.get("timing_s/reward", 0.0)
        return {"tokens": int(m.get("rollout/gen_tokens", 0)), "gen_s": gen, "reward_s": reward,
                "old_logp_s": m.get("timing_s/old_log_prob", 0.0),
                "update_s": m.get("timing_s/update_actor", 0.0),
                "weight_sync_s": m.get("timing_s/update_weights", 0.0),
                "kept_frac": m.get("actor/kept_frac", 1.0)}

    def run_trl(_):
        paused.step()
        return trl_clock.take()

    settings = {"model": model_path, "prompts": args.prompts, "group": args.group,
                "max_new_tokens": args.max_new_tokens, "micro_batch_size": args.micro_batch_size,
                "lr": args.lr, "our_engine": run.rollout.engine,
                "our_skip_zero_adv": run.learner.skip_zero_adv, "trl_threads": args.threads,
                "trl_generation": "transformers model.generate", "reps": args.reps,
                "warmup": args.warmup, "overrides": args.overrides}
    machine = machine_info()
    machine["trl"] = trl.__version__
    print_block("machine", machine)
    print_block("settings", settings)
    try:
        samples = interleaved([Arm("ours", run_ours), Arm("TRL GRPOTrainer", run_trl)],
                              args.reps, args.warmup, progress=print)
    finally:
        paused.finish()
        ours.shutdown()
    table = Table(["side", "steps", "s/step median", "s min-max", "gen tokens/step",
                   "gen s", "reward s", "rest s"], title="seconds per GRPO step (interleaved)")
    med = {}
    for name, v in samples.items():
        sm = summarize([x["seconds"] for x in v])
        med[name] = sm.median
        gen = summarize([x.get("gen_s", 0.0) for x in v]).median
        rew = summarize([x.get("reward_s", 0.0) for x in v]).median
        table.add(name, sm.n, f"{sm.median:.2f}", f"{sm.min:.2f} - {sm.max:.2f}",
                  f"{summarize([x['tokens'] for x in v]).median:,.0f}", f"{gen:.2f}", f"{rew:.2f}",
                  f"{sm.median - gen - rew:.2f}")
    ratio = med["TRL GRPOTrainer"] / med["ours"]
    ratios = Table(["ratio (median s/step)", "value", "target"], title="ratios")
    ratios.add("TRL / ours", f"{ratio:.2f}x", ">= 2x")
    print_tables(table, ratios)
    return {"benchmark": "trl", "machine": machine, "settings": settings,
            "steps": {"ours": next(step_no), "trl": trl_trainer.state.global_step},
            "median_seconds": med, "ratios": {"trl / ours": ratio}, "samples": samples}
