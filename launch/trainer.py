"""The training loop on Ray actors: ``Trainer.setup / step / evaluate / save / fit``.

One step (docs/design.md, "One training step"):

    driver: prompts + meta.plan -> requests
    rollout actors -> ObjectRef(TrajectoryBatch) --> reward actor (scores, GRPO advantages)
        --> learner ranks (old log-probs + TAMPO l_k from the same logits; theta or phi phase;
            with learner.mini_batches = 1 the theta update's forward is the old pass)
        --> meta actor (TAMPO update)      learner rank 0 weights --> rollout actors

The driver only moves object refs and small metric dicts; trajectory tensors never enter it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from launch.cluster import start_ray
from launch.config import RunConfig, build_strategy
from launch.sampling import PromptSampler, eval_seed, rollout_seed
from launch.signals import Interrupted, resume_command
from meta.phases import phase_for_step
from rollout.base import RolloutRequest

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """The run cannot go on (a learner rank died, updates keep failing); the message says why,
    names the last checkpoint and how to resume. ``launch.run`` prints it without a traceback."""


@dataclass
class Rollout:
    """One step's rollout, launched and possibly still generating (``Trainer.launch_rollout``);
    the trainer keeps them by step."""

    parts: list[list[RolloutRequest]]
    """its requests, one list per rollout actor (kept: a lost rollout is regenerated from them)"""
    planned: list[float]
    """the per-prompt temperatures the meta actor planned (for the metrics)"""
    scored: Any
    """ObjectRef of the scored TrajectoryBatch (rewards and advantages filled)"""
    metrics: Any
    """ObjectRef of its rollout metrics (dict)"""
    restarts: int
    """rollout-actor restarts counted when it was launched: a later restart may have lost it"""


class Trainer:
    def __init__(self, run: RunConfig, run_dir: str, model_path: str, train, heldout,
                 validation=()):
        self.run, self.run_dir, self.model_path = run, Path(run_dir), str(model_path)
        self.train, self.heldout, self.validation = train, heldout, list(validation)
        self.sampler = PromptSampler(len(train), run.seed)
        self.start_step = 0
        self.wandb_id: str | None = None
        self._nonfinite_streak = 0
        self._rollout_pids: list[int] = []  # rollout actors' process ids: a change = a restart
        self.rollout_restarts = 0
        self.off_policy = run.trainer.off_policy_steps
        """0: generate, then train on it; 1: the rollout of step t + 1 is generated (with the
        weights before update t) while the learners train on step t (``step``)"""
        self.stop_step = run.trainer.total_steps
        """no rollout is launched for this step or later"""
        self.weight_version = 0
        """learner updates the engines' weights have had (a batch records the version that
        generated it: ``TrajectoryBatch.policy_version``)"""
        self._rollouts: dict[int, Rollout] = {}  # launched, not yet trained on, by step
        from rollout.config import resolve_weight_sync

        self.weight_sync = resolve_weight_sync(run.rollout, run.cluster.colocate)
        """collective (vLLM's weight-transfer API, from learner rank 0) | object_store"""

    # ------------------------------------------------------------------ setup

    def setup(self, learners: bool = True) -> None:
        """Start Ray and the actors; ``learners=False`` for evaluation only
        (``launch.evaluate``)."""
        import ray
        from transformers import AutoConfig, AutoTokenizer

        from data.prompts import render_prompt
        from launch.model_export import apply_policy

        run = self.run
        torch.manual_seed(run.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id or 0
        hidden = AutoConfig.from_pretrained(self.model_path).hidden_size
        self.strategy = build_strategy(run, hidden)  # seeded: every actor gets this same copy
        apply_policy(self.model_path, self.strategy)  # an exported model: its learned policy
        render = lambda p: self.tokenizer(  # noqa: E731
            render_prompt(p, self.tokenizer, run.data.prompt_template, run.data.instruction)
        )["input_ids"][-run.rollout.max_prompt_tokens:]
        self.train_ids = [render(p) for p in self.train]
        self.heldout_ids = [render(p) for p in self.heldout]
        self.validation_ids = [render(p) for p in self.validation]
        m = run.learner.num_ranks
        self.dashboard = start_ray(run, run.rollout.num_actors + m + 2)
        if self.dashboard:
            from launch.quiet import dashboard_line

            print(dashboard_line(self.dashboard))
        self._make_actors(learners)
        self._rollout_pids = ray.get([a.ping.remote() for a in self.rollout])
        self._form_sync_group()
        print(self.placement.describe())
        print(f"weight sync: {self._sync_description}")

    def _make_actors(self, learners: bool = True) -> None:
        import ray

        from launch.placement import Placement
        from learner.worker import LearnerWorker
        from meta.worker import MetaWorker
        from reward.worker import RewardWorker
        from rollout.worker import RolloutWorker

        run = self.run
        m = run.learner.num_ranks
        tp = run.rollout.tensor_parallel_size if run.rollout.engine == "vllm" else 1
        self.placement = place = Placement(run.cluster, run.rollout.num_actors, m, engine_gpus=tp)
        restart = dict(max_restarts=3, max_task_retries=3)
        self.rollout = [
            ray.remote(RolloutWorker).options(name=f"rollout-{i}", **place.rollout_options(i),
                                              **restart).remote(
                self.model_path, self.strategy, run.rollout, run.model.dtype, run.seed, i,
                self.weight_sync)
            for i in range(run.rollout.num_actors)]
        self.reward = ray.remote(RewardWorker).options(name="reward", num_cpus=1, **restart).remote(
            run.reward.num_workers, run.reward.timeout_s, run.reward.format_weight,
            run.learner.norm_adv_by_std, self.pad_id, run.reward.random_control, run.seed)
        self.meta = ray.remote(MetaWorker).options(name="meta", num_cpus=0).remote(
            self.strategy, run.seed)
        addr, port = place.rendezvous()
        self.learners = [
            ray.remote(LearnerWorker).options(name=f"learner-{r}",
                                              **place.learner_options(r)).remote(
                self.model_path, run.learner, run.meta.phi, self.strategy.head,
                run.trainer.total_steps, rank=r, world_size=m, master_addr=addr,
                master_port=port, dtype=run.model.dtype, seed=run.seed)
            for r in range(m if learners else 0)]
        self.candidates = ray.get(self.meta.get_candidates.remote())

    # ------------------------------------------------------------------ one step

    def phase(self, step: int) -> str:
        if self.run.meta.phi is None:  # the strategy learns no head
            return "theta"
        phi = self.run.meta.phi
        return phase_for_step(step, phi.schedule, phi.phase_len, phi.phi_first)

    def requests_for(self, step: int) -> tuple[list[list[RolloutRequest]], list[float]]:
        """This step's requests, split across rollout actors with whole groups together, and the
        per-prompt temperatures the meta actor planned (TAMPO's T_s, a schedule's value)."""
        import ray

        run = self.run
        idx = self.sampler.next(run.trainer.prompts_per_step)
        temps = ray.get(self.meta.plan.remote(step, len(idx)))
        reqs = [RolloutRequest(self.train_ids[i], g, temps[g], p.id, p.task, p.answer, p.level,
                               p.meta)
                for g, (i, p) in enumerate((i, self.train[i]) for i in idx)
                for _ in range(run.rollout.group_size)]
        return _split_groups(reqs, run.rollout.num_actors), temps

    def launch_rollout(self, step: int, parts: list[list[RolloutRequest]] | None = None,
                       planned: list[float] | None = None) -> Rollout:
        """Start step `step`'s generation and scoring (new requests unless `parts` are given);
        returns at once with the object refs. Each rollout actor runs its calls in the order they
        were sent, so the generation uses the weights of the last sync sent before it."""
        if parts is None:
            parts, planned = self.requests_for(step)
        batch_refs = [a.generate.remote(p, step, rollout_seed(self.run.seed, step))
                      for a, p in zip(self.rollout, parts) if p]
        scored, metrics = self.reward.score.options(num_returns=2).remote(*batch_refs)
        return Rollout(parts, planned, scored, metrics, self.rollout_restarts)

    def step(self, step: int) -> dict:
        """Train on step `step`'s rollout (launched now unless already in flight).

        A rollout actor that crashed and restarted gets the current weights, and every rollout
        it lost (launched before the restart and not finished) is generated again on the same
        requests and seeds, with the weights the engines hold now (its policy_version says
        which); the update then runs. Only what happens before the learners' update is repeated:
        nothing is lost or counted twice (no stage consumed the lost trajectories).
        """
        t0 = time.perf_counter()
        attempts = 0
        while True:
            if step not in self._rollouts:
                self._rollouts[step] = self.launch_rollout(step)
            try:
                trained = self._train(step)
                break
            except Exception as err:  # re-raised unless a restart explains it
                attempts += 1
                if attempts == 3 or not self._regenerate_lost():
                    raise
                log.warning("step %d: a rollout actor restarted (%s); weights resent, its "
                            "rollouts generated again, step repeated", step + 1,
                            type(err).__name__)
        return self._finish(step, t0, *trained)

    def _regenerate_lost(self) -> list[int]:
        """Resync restarted rollout actors, then relaunch the rollouts a restart may have lost:
        launched before the latest restart and not finished (still pending, or failed); the
        others are kept. Returns the steps relaunched."""
        self.resync_restarted_rollout()
        lost = []
        for s, r in sorted(self._rollouts.items()):
            if r.restarts == self.rollout_restarts:
                continue
            if _finished(r.metrics) is not None:  # done before the restart: kept
                r.restarts = self.rollout_restarts
                continue
            self._rollouts[s] = self.launch_rollout(s, r.parts, r.planned)
            lost.append(s)
        return lost

    def resync_restarted_rollout(self) -> list[int]:
        """Send the current weights to rollout actors that restarted since the last check (their
        process id changed); returns their indices."""
        import ray

        pids = ray.get([a.ping.remote() for a in self.rollout])
        restarted = [i for i, (a, b) in enumerate(zip(self._rollout_pids, pids)) if a != b]
        self._rollout_pids = pids
        if restarted:
            self._form_sync_group()  # a restarted engine's workers are new processes
            self.sync_weights("full", [self.rollout[i] for i in restarted])
            self.rollout_restarts += len(restarted)
        return restarted

    def _train(self, step: int) -> tuple:
        """The learners train on step `step`'s rollout (phase by step number); with
        off_policy_steps = 1 the next step's rollout is launched first, before this update's
        meta-actor update (so it is planned with the meta state after step - 1's update) and
        before this update's weight sync (so it samples with the weights before this update).
        Returns once the learners have updated: (the rollout, phase, learner stats, meta ref).
        A failure in here (a lost rollout) leaves the learners untouched: the step may repeat."""
        import ray

        phase = self.phase(step)
        cur = self._rollouts[step]
        results = [lr.train_step.options(num_returns=2).remote(cur.scored, phase, self.candidates)
                   for lr in self.learners]
        stats_refs, meta_refs = zip(*results)
        nxt = step + 1
        if self.off_policy and nxt < self.stop_step and nxt not in self._rollouts:
            self._rollouts[nxt] = self.launch_rollout(nxt)
        meta_ref = self.meta.update.remote(*meta_refs)
        dump_every = self.run.trainer.dump_every
        if dump_every and (step % dump_every == 0 or step == self.run.trainer.total_steps - 1):
            dump = self.run_dir / "rollouts" / f"step_{step:06d}.jsonl"
            self.reward.dump.remote(cur.scored, str(dump), self.model_path)
        learner_stats = ray.get(list(stats_refs))
        del self._rollouts[step]  # consumed: from here on the step never repeats
        return cur, phase, learner_stats, meta_ref

    def _finish(self, step: int, t0: float, cur: Rollout, phase: str, learner_stats: list,
                meta_ref) -> dict:
        """After the update: the weight sync (which each engine runs once its generation is
        done), the metrics. Nothing here repeats the step."""
        import ray

        self.weight_version = step + 1
        t_sync = time.perf_counter()
        try:
            sync_s = self.sync_weights({"theta": "theta", "phi": "phi", "joint": "all"}[phase])
        except Exception:  # re-raised unless an engine restarted mid-sync (full weights then)
            if not self.resync_restarted_rollout():
                raise
            sync_s = [float("nan")]
        metrics = {**ray.get(cur.metrics), **_mean_dicts(learner_stats), **ray.get(meta_ref)}
        metrics["timing_s/update_weights"] = time.perf_counter() - t_sync
        metrics["timing_s/update_weights_engine"] = max(sync_s)
        metrics["timing_s/step"] = time.perf_counter() - t0
        metrics["perf/throughput"] = (metrics.get("rollout/gen_tokens", 0.0)
                                      / metrics["timing_s/step"])
        metrics["phase"] = phase
        metrics["rollout/planned_temperature"] = sum(cur.planned) / len(cur.planned)
        metrics["rollout/actor_restarts"] = float(self.rollout_restarts)
        metrics["rollout/staleness"] = step - metrics["rollout/policy_version"]
        during = self._rollouts.get(step + 1)  # off-policy, generated during this step
        if not self.off_policy:
            gen_s = metrics["rollout/gen_s"]
        elif during is None:  # the last step: nothing generated during it
            gen_s = 0.0
        else:  # NaN if it was lost (its own step regenerates it)
            gen_s = (_finished(during.metrics, timeout=10.0) or {}).get("rollout/gen_s",
                                                                         float("nan"))
        metrics.update(_idle_ratios(metrics["timing_s/step"], metrics.get("timing_s/learner", 0.0),
                                    gen_s / max(1, len(self.rollout))))
        return metrics

    def sync_weights(self, which: str, engines: list | None = None) -> list[float]:
        """Learner weights into the engines; the sync's seconds (object store: each engine's).
        `which`: theta | phi | all, or full = every weight the run trains (theta, plus phi with
        a head), which also clears a restarted engine's refusal to generate.

        collective: every learner rank streams (ZeRO-3: one layer gathered at a time), rank 0
        broadcasts to every engine of the group at once (``learner.worker.send_weights``);
        object_store: every rank gathers the full state dict, rank 0's goes through Ray's object
        store to `engines` (default: all)."""
        import ray

        full = which == "full"
        if full:
            which = "theta" if self.run.meta.phi is None else "all"
        if self.weight_sync == "collective":
            sent = [lr.send_weights.remote(which, self.weight_version, full)
                    for lr in self.learners]
            return ray.get(sent)[:1]
        engines = self.rollout if engines is None else engines
        weights = [lr.get_weights.remote(which) for lr in self.learners][0]
        load = "load_all_weights" if full else "load_weights"
        return ray.get([getattr(a, load).remote(weights, self.weight_version) for a in engines])

    def _form_sync_group(self) -> None:
        """(Again) the collective weight sync's group: learner rank 0 + every worker of every
        engine (``rollout.weight_transfer``)."""
        self._sync_description = "object store (every rank's full state dict; rank 0's to " \
                                 "every rollout actor)"
        if self.weight_sync != "collective" or not self.learners:
            return
        import ray

        host, port, backend = ray.get(self.learners[0].weight_sync_address.remote())
        tp = [self.run.rollout.tensor_parallel_size] * len(self.rollout)
        ray.get([lr.init_weight_sync.remote(backend, host, port, 1 + sum(tp), self.rollout, tp)
                 for lr in self.learners])
        workers = f"{sum(tp)} engine worker" + ("s" if sum(tp) > 1 else "")
        self._sync_description = (f"collective ({backend} group at {host}:{port}: learner rank 0 "
                                  f"+ {workers}, one layer at a time)")

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, step: int, greedy_column: bool = False) -> dict[str, float]:
        """Held-out Avg@k / Pass@k / maj@k, overall, per family and per level (keys eval/...),
        decoded as eval.temperature and eval.temperature_mode say; ``greedy_column``: one argmax
        response per problem instead (keys eval_greedy/..., the greedy accuracy as avg@1). Each
        problem's results also go to ``evals/step_NNNNNN[_greedy].jsonl`` in the run folder
        (``launch.compare`` pairs runs by them)."""
        ev = self.run.eval
        if greedy_column:  # argmax: no temperature (and no draw from the meta actor's RNG)
            return self._evaluate(step, self.heldout, self.heldout_ids, 1, "eval_greedy",
                                  "_greedy", base_tau=1.0, greedy=True)
        greedy = ev.temperature_mode == "greedy"
        mode = "mean" if ev.temperature_mode == "mean" else "sample"
        return self._evaluate(step, self.heldout, self.heldout_ids, ev.samples, "eval", "",
                              base_tau=ev.temperature, greedy=greedy, mode=mode)

    def sweep(self, step: int) -> dict[str, float]:
        """The held-out test and the validation problems decoded at each of eval.temperatures
        (every token at that temperature, whatever the strategy) and under the strategy's own
        policy ('own': its plan and per-token rule, in eval.temperature_mode sample or mean):
        keys sweep/<test|val>/<t0.6|own>/..., records evals/step_NNNNNN_<split>_<name>.jsonl.
        One sampling seed for all, so two runs of one seed pair at the same temperature on the
        same problems with the same random numbers."""
        from launch.metrics import decoding_name

        ev = self.run.eval
        if not ev.temperatures:
            return {}
        mode = "mean" if ev.temperature_mode == "mean" else "sample"
        # own last: it follows a swap of the strategy and back (its records equal the eval/
        # rule's where that decodes as the strategy's plan does: IntroLLM's tau_0 = 1.0)
        decodings = [(decoding_name(t), t) for t in (*ev.temperatures, None)]
        plan_seed = eval_seed(self.run.seed, step)
        out: dict[str, float] = {}
        for split, problems, ids in (("test", self.heldout, self.heldout_ids),
                                     ("val", self.validation, self.validation_ids)):
            for name, temperature in decodings:
                out.update(self._evaluate(step, problems, ids, ev.samples,
                                          f"sweep/{split}/{name}", f"_{split}_{name}",
                                          base_tau=temperature, fixed=temperature is not None,
                                          mode=mode, plan_seed=plan_seed))
        return out

    def _evaluate(self, step: int, problems: list, ids: list, k: int, prefix: str, tag: str,
                  base_tau: float | None, greedy: bool = False, mode: str = "sample",
                  fixed: bool = False, plan_seed: int | None = None) -> dict[str, float]:
        """`k` responses per problem, scored; ``base_tau``: every prompt's temperature (None: the
        meta actor's evaluation plan, drawn with ``plan_seed`` when given, so that a checkpoint
        evaluated later draws the same); ``fixed``: every token at it, the strategy's per-token
        rule set aside; ``mode``: the strategy's sample | mean. Writes
        ``evals/step_NNNNNN<tag>.jsonl``; returns the summary as ``<prefix>/...``."""
        import ray

        from launch.metrics import groups_of, summarize, write_problem_records
        from reward.extract import last_boxed

        if not problems:
            return {}
        n = len(problems)
        temps = ([base_tau] * n if base_tau is not None
                 else ray.get(self.meta.plan.remote(step, n, for_eval=True, seed=plan_seed)))
        reqs = [RolloutRequest(ids[i], i, temps[i], p.id, p.task, p.answer, p.level, p.meta)
                for i, p in enumerate(problems) for _ in range(k)]
        try:
            ray.get([a.set_decoding.remote("sample" if greedy else mode,
                                           base_tau if fixed else None) for a in self.rollout])
            parts = _split_groups(reqs, len(self.rollout))
            texts_refs = [a.generate_texts.remote(p, step, eval_seed(self.run.seed, step), greedy)
                          for a, p in zip(self.rollout, parts) if p]
            texts = [t for ts in ray.get(texts_refs) for t in ts]
        finally:  # the strategy as it trains, whatever happened
            ray.get([a.set_decoding.remote() for a in self.rollout])
        items = [(q.task, t, q.answer, q.meta) for q, t in zip(reqs, texts)]
        rewards = ray.get(self.reward.score_texts.remote(items))
        records = [{"correct": rewards[i * k:(i + 1) * k],
                    "answers": [last_boxed(t) for t in texts[i * k:(i + 1) * k]],
                    "groups": groups_of(p)} for i, p in enumerate(problems)]
        write_problem_records(self.run_dir / "evals" / f"step_{step:06d}{tag}.jsonl",
                              [{"problem_id": p.id, **r} for p, r in zip(problems, records)])
        return {f"{prefix}/{key}": v
                for key, v in summarize(records, ks=tuple(sorted({1, k}))).items()}

    def evaluate_all(self, step: int) -> dict[str, float]:
        """The evaluation of `step` (eval.*), plus the greedy column with eval.greedy."""
        out = self.evaluate(step)
        if self.run.eval.greedy:
            out.update(self.evaluate(step, greedy_column=True))
        return out

    # ------------------------------------------------------------------ checkpoints

    def save(self, step: int) -> Path:
        """Atomic checkpoint after step `step` (``launch.checkpoint``): staged, filled by the
        learners and the driver, committed; keeps the last trainer.keep_last."""
        import ray

        from launch import checkpoint
        from launch.model_export import copy_model_files, weights_dtype

        tmp = checkpoint.stage(self.run_dir, step + 1)
        written = {}  # every rank writes its files and hashes them, all ranks at once
        for files in ray.get([lr.save_checkpoint.remote(str(tmp)) for lr in self.learners]):
            written.update(files)
        model = checkpoint.model_dir(tmp)
        copy_model_files(Path(self.model_path), model, weights_dtype(model))
        checkpoint.write_driver(tmp, {"meta": ray.get(self.meta.state_dict.remote()),
                                      "step": step + 1, "sampler": self.sampler.state_dict(),
                                      "rng": torch.get_rng_state(), "wandb_id": self.wandb_id,
                                      "strategy": self.strategy.spec(),
                                      "model_path": str(Path(self.model_path).resolve()),
                                      "in_flight": self._in_flight_state(step + 1)},
                                asdict(self.run))
        return checkpoint.commit(tmp, self.run.trainer.keep_last, written)

    def _in_flight_state(self, step: int) -> dict | None:
        """The rollout launched for `step` before this checkpoint (off_policy_steps = 1), waited
        for and kept whole: it was sampled with weights the checkpoint no longer holds, so a
        resumed run trains on this same batch, as the straight run does."""
        import ray

        if step not in self._rollouts:
            return None
        try:
            ray.get(self._rollouts[step].metrics)
        except Exception:  # lost with a restarted rollout actor: regenerated, then kept
            if not self._regenerate_lost():
                raise
        r = self._rollouts[step]
        return {"step": step, "batch": ray.get(r.scored).to_state(),
                "metrics": ray.get(r.metrics), "planned": list(r.planned),
                "requests": [asdict(q) for p in r.parts for q in p]}

    def _restore_in_flight(self, state: dict | None) -> None:
        import ray

        from rollout.trajectory import TrajectoryBatch

        if state is None:
            return
        reqs = [RolloutRequest(**q) for q in state["requests"]]
        parts = _split_groups(reqs, len(self.rollout))  # this run's actors (their count may vary)
        batch = TrajectoryBatch.from_state(state["batch"])
        self._rollouts[int(state["step"])] = Rollout(
            parts, list(state["planned"]), ray.put(batch), ray.put(state["metrics"]),
            self.rollout_restarts)

    def export_model(self, out: Path) -> Path:
        """The trained model as a Hugging Face folder with its temperature policy
        (``launch.model_export``): theta (and phi) written by the learners (each rank its share,
        gathered one layer group at a time under ZeRO-3), the strategy's state from the meta
        actor."""
        import copy

        import ray

        from launch.model_export import write_model_folder

        strategy = copy.deepcopy(self.strategy)
        strategy.load_state_dict(ray.get(self.meta.state_dict.remote())["strategy"])

        def learners_write(folder: Path) -> None:  # every rank its share, layer group by group
            ray.get([lr.write_model.remote(str(folder)) for lr in self.learners])

        return write_model_folder(out, Path(self.model_path), learners_write, strategy,
                                  self.run.trainer.total_steps)

    def restore(self, ckpt: Path) -> None:
        """Continue from `ckpt` (``launch.checkpoint``): learners (theta, phi, optimizers, RNG),
        the meta actor, the prompt sampler, the step; then every engine gets the restored weights
        before the first rollout. Call after ``setup``."""
        import ray

        from launch.checkpoint import load_driver_state

        driver = load_driver_state(ckpt)
        ray.get([lr.load_checkpoint.remote(str(ckpt)) for lr in self.learners])
        ray.get(self.meta.load_state_dict.remote(driver["meta"]))
        self.sampler.load_state_dict(driver["sampler"])
        torch.set_rng_state(driver["rng"])
        self.start_step = self.weight_version = int(driver["step"])
        self._restore_in_flight(driver.get("in_flight"))
        self.sync_weights("full")
        print(f"resumed from {ckpt} at step {self.start_step} (data epoch "
              f"{self.sampler.epoch}, position {self.sampler.pos})")

    # ------------------------------------------------------------------ the loop

    def fit(self, logger) -> dict[str, float]:
        from tqdm import tqdm

        run = self.run
        total = run.trainer.total_steps
        last: dict[str, float] = {}
        if self.start_step == 0:
            base = {k.replace("eval", "eval_base", 1): v
                    for k, v in self.evaluate_all(0).items()}
            if base:
                logger.log(0, base)
        else:  # resumed: the base model was evaluated (and logged) by the first run
            from launch.checkpoint import logged_base_eval

            base = logged_base_eval(logger.path)
        bar = tqdm(range(self.start_step, total), desc="train", disable=None, leave=False)
        t_loop, done = time.perf_counter(), self.start_step
        try:
            for step in bar:
                metrics = self._guarded_step(step)
                self._check_nonfinite(step, metrics)
                if run.eval.every and (step + 1) % run.eval.every == 0 and step + 1 < total:
                    metrics.update(self.evaluate(step + 1))
                if step + 1 == total:
                    metrics.update(self.evaluate_all(step + 1))
                    metrics.update(self.sweep(step + 1))
                every = run.trainer.save_every
                if every and ((step + 1) % every == 0 or step + 1 == total):
                    self.save(step)
                logger.log(step + 1, metrics)
                last, done = metrics, step + 1  # before the line: it says the step is done
                tqdm.write(logger.console_line(step, total, metrics, time.perf_counter() - t_loop,
                                               step + 1 - self.start_step))
        except Interrupted as stop:  # Ctrl-C / SIGTERM: launch.run names the step reached
            if done < total:  # the step running (or about to)
                stop.step, stop.total = done + 1, total
            raise
        return {**base, **last}

    def _guarded_step(self, step: int) -> dict:
        """``step``, turning a dead learner rank into a TrainingStopped that names it. Rollout and
        reward actors restart by themselves (max_restarts) and their tasks are retried with the
        same seeds, so they never end up here; learner ranks hold optimizer state and a process
        group, so the run stops and resumes from the last checkpoint instead."""
        import ray

        try:
            return self.step(step)
        except ray.exceptions.RayActorError as err:
            dead = []
            for r, lr in enumerate(self.learners):
                try:
                    ray.get(lr.ping.remote(), timeout=30)
                except Exception:  # noqa: BLE001 - any failure to answer counts as dead
                    dead.append(r)
            if not dead:
                raise
            ranks = ", ".join(str(r) for r in dead)
            raise TrainingStopped(
                f"learner rank {ranks} died during step {step + 1} ({type(err).__name__}); "
                f"{self._resume_hint()}") from err

    def _check_nonfinite(self, step: int, metrics: dict) -> None:
        """Count steps whose update was skipped for NaN/inf; stop after max_nonfinite_steps in a
        row."""
        skipped = max(metrics.get("actor/skipped_nonfinite", 0.0),
                      metrics.get("phi/skipped_nonfinite", 0.0))
        if not skipped:
            self._nonfinite_streak = 0
            return
        self._nonfinite_streak += 1
        limit = self.run.trainer.max_nonfinite_steps
        log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, stop at "
                    "%d)", step + 1, self._nonfinite_streak, limit)
        if self._nonfinite_streak >= limit:
            raise TrainingStopped(
                f"{self._nonfinite_streak} steps in a row (up to step {step + 1}) had a non-finite "
                f"loss or gradient and were skipped; the weights are those of the last good "
                f"update. Lower learner.lr or check the data and model, then {self._resume_hint()}"
                f" (trainer.max_nonfinite_steps={limit} sets the limit)")

    def _resume_hint(self) -> str:
        from launch.checkpoint import complete_checkpoints

        found = complete_checkpoints(self.run_dir)
        if not found:
            return "there is no checkpoint yet (trainer.save_every); start the run again"
        return f"the last checkpoint is {found[-1]}; resume with: {resume_command(self.run_dir)}"

    def shutdown(self) -> None:
        import ray

        try:
            ray.get(self.reward.close.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
        ray.shutdown()


def _split_groups(reqs: list[RolloutRequest], parts: int) -> list[list[RolloutRequest]]:
    groups: dict[int, list[RolloutRequest]] = {}
    for r in reqs:
        groups.setdefault(r.group_index, []).append(r)
    out: list[list[RolloutRequest]] = [[] for _ in range(parts)]
    for j, g in enumerate(groups.values()):
        out[j % parts].extend(g)
    return out


def _finished(ref, timeout: float = 0.0):
    """The value of `ref` if its task finished within `timeout` seconds and succeeded; None if it
    is still running or failed (e.g. lost with a restarted actor: the step that trains on it
    sees the failure itself)."""
    import ray

    done, _ = ray.wait([ref], timeout=timeout)
    try:
        return ray.get(done[0]) if done else None
    except Exception:  # noqa: BLE001 - failed: reported where it is consumed
        return None


def _idle_ratios(wall: float, learner_s: float, rollout_s: float) -> dict[str, float]:
    """The share of a step's wall time the learner ranks and the rollout engines were not
    working (verl logs trainer/idle_ratio): `learner_s` = train_step's own time (mean over ranks),
    `rollout_s` = the generation that ran during the step (this step's batch when synchronous,
    the next step's when it overlaps this update), per rollout actor."""
    def idle(busy: float) -> float:
        if busy != busy:  # NaN: not measured
            return busy
        return min(1.0, max(0.0, 1.0 - busy / wall)) if wall > 0 else 0.0

    return {"perf/idle_ratio_learner": idle(learner_s), "perf/idle_ratio_rollout": idle(rollout_s)}


def _mean_dicts(dicts: list[dict]) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {k: sum(d[k] for d in dicts if k in d) / sum(1 for d in dicts if k in d) for k in keys}
