"""``LearnerWorker``: one DeepSpeed rank of the GRPO learner: theta (the LLM), phi (IntroLLM's
head).

A plain object; a Ray actor wraps it (one actor per rank). Every public method except
``state_dict`` on ZeRO 0-2 is a collective: all ranks call it, in the same order, on slices of
the same size (``TrajectoryBatch.split(world_size)``).

Per step, on this rank's slice of the batch (docs/algorithms.md §1-§3):

    old = worker.compute_old_logprobs(batch, candidates)  # no grad: log pi_old with the
                                                          # recorded tau, entropies, TAMPO l_k
                                                          # from the same logits
    stats, old = worker.update_theta(batch, old)          # GRPO theta-phase (PPO mini-batches)
    stats, old = worker.update_theta(batch)               # mini_batches = 1: one pass, the
                                                          # update's forward gives log pi_old
                                                          # (as TRL's), returned as `old`
    worker.update_phi(batch)                              # IntroLLM phi-phase (backbone frozen)
    stats, meta_input = worker.train_step(full_batch, phase, candidates)  # all of it, for the
                                                                          # actor

How this departs from the textbook, deliberately:

* every log-prob (old, current, reference) is log_softmax(z_t / tau_t)[y_t] with the tau_t the
  rollout recorded; the forward uses the rollout engine's position ids (cumsum(mask) - 1);
* no dropout (model in eval mode): log pi_old and log pi_theta before the first step are equal,
  so with one optimizer step per batch (learner.mini_batches = 1) `train_step` skips the separate
  old pass: the update's forward gives log pi_old (detached), the entropies and TAMPO's l_k;
* micro-batches keep GRPO groups together, ordered by length (``learner.batching``): less
  padding, and the rows of a group run their shared prompt once (`learner.share_prompt`);
* mini-batch k of a slice is rows k, k + m, k + 2m, ... (strided, not contiguous), so that
  R ranks on R slices see exactly the mini-batches 1 rank sees on the concatenated batch;
* the losses use a *global* denominator (all ranks, all micro-batches of the mini-batch), so
  micro-batching and data parallelism give the gradient of one big batch (see `_update`);
* a non-finite loss or gradient norm skips the optimizer step on every rank (counted);
* the learning rate schedule (constant after linear warm-up) steps once per update call, i.e.
  per training step as in verl, not per optimizer step.

Dimension vocabulary: B responses (this rank), Lp prompt columns, T response columns, V vocab,
d hidden, K candidate temperatures. Heavy imports (deepspeed, transformers) happen at construction.

Beside this module: ``learner.batching`` (micro-batches, shared prompts), ``learner.stats`` (how
statistics are reduced over micro-batches and ranks), ``learner.checkpoint`` (a rank's files).
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from learner import checkpoint, ds_utils
from learner.batching import (
    Micro,
    by_length,
    informative_rows,
    make_micro,
    plain_kv_cache,
    require_advantages,
    response_outputs,
)
from learner.config import LearnerConfig, PhiTrainingConfig
from learner.core_algos import masked_mean, phi_policy_loss, policy_loss
from learner.logprobs import old_pass_stats, token_entropy, token_logprobs
from learner.stats import (
    accumulate,
    average,
    mismatch_stats,
    reduce_ranks,
    tau_entropy_stats,
    token_mean,
)
from meta.introllm import TemperatureHead
from rollout.trajectory import TrajectoryBatch

__all__ = ["LearnerWorker"]


class _HeadLogProb(nn.Module):
    """The phi DeepSpeed module: forward = log pi_phi(a_t) of recorded actions.

    Its state dict keys are `temperature_head.*`, the names weight sync uses for phi.
    """

    def __init__(self, head: TemperatureHead):
        super().__init__()
        self.temperature_head = head

    def forward(self, hidden: Tensor, gate: Tensor, z: Tensor, forced: Tensor) -> Tensor:
        return self.temperature_head.log_prob(hidden, gate, z, forced)


class LearnerWorker:
    def __init__(self, model_path: str, cfg: LearnerConfig, phi: PhiTrainingConfig | None = None,
                 head: TemperatureHead | None = None, total_steps: int = 1, rank: int = 0,
                 world_size: int = 1,
                 master_addr: str = "127.0.0.1", master_port: int = 29500,
                 dtype: str = "float32", seed: int = 0):
        """Load theta from `model_path` and build its DeepSpeed engine (+ phi's when `phi` is set).

        head: the strategy's head (``strategy.head``; required with `phi`): the learner trains a
        copy, so that behaviour and learner heads start equal. total_steps is kept for schedules
        that decay; the constant schedule ignores it.
        world_size 1 ignores master_port and rendezvous on a free port.
        """
        self.cfg, self.phi_cfg, self.dtype = cfg, phi, dtype
        self.rank, self.world_size, self.total_steps = rank, world_size, total_steps
        self.zero_stage = cfg.zero_stage
        self.backend = ds_utils.init_distributed(rank, world_size, master_addr,
                                                 master_port if world_size > 1 else None)
        theta_config = ds_utils.ds_config(cfg.micro_batch_size, cfg.grad_clip, cfg.zero_stage,
                                          dtype, cfg.offload_optimizer, cfg.offload_params)
        torch.manual_seed(seed)
        torch_dtype = getattr(torch, dtype)
        # ZeRO-3: partitioned while it loads (no full copy per rank); else a full copy
        model = ds_utils.load_model(model_path, torch_dtype, theta_config).eval()
        self.theta = ds_utils.build_engine(model, cfg.lr, cfg.weight_decay, theta_config)
        self.share_prompt = (cfg.share_prompt and plain_kv_cache(model.config)
                             and not cfg.gradient_checkpointing)
        """rows sharing a prompt run it once (learner.share_prompt, where the KV cache allows:
        not in checkpointed layers)"""
        self.theta.eval()
        if cfg.gradient_checkpointing:
            ds_utils.checkpoint_layers(model)
        self.device = self.theta.device
        # stage 0 fp32 steps the bare AdamW, which never checks for NaN: the worker checks itself
        self._theta_own_check = cfg.zero_stage == 0 and dtype == "float32"
        self.ref = None
        if cfg.kl_coef > 0:  # a frozen copy, sharded like theta; loaded only with the KL term
            self.ref = ds_utils.frozen_model(model_path, torch_dtype, theta_config, self.device)
        self.phi = None
        if phi is not None:
            if head is None:
                raise ValueError("phi-phase training needs the strategy's temperature head: pass "
                                 "head=strategy.head (a strategy with learns_head)")
            head = copy.deepcopy(head).float()
            # the head is ~0.1 % of the parameters: replicated (stage 0) on every rank, fp32
            self.phi = ds_utils.build_engine(
                _HeadLogProb(head), phi.lr, phi.weight_decay,
                ds_utils.ds_config(cfg.micro_batch_size, phi.grad_clip, 0, "float32"))
        self.updates = {"theta": 0, "phi": 0}
        """update calls so far per phase: the learning-rate schedule's position"""

    # ------------------------------------------------------------------ forward passes

    def _logits(self, model, m: Micro) -> Tensor:
        """(b, t, V) untempered logits of the response tokens."""
        bare = self.theta.module if model is self.theta else model
        return response_outputs(model, bare, m, "logits")

    @torch.no_grad()
    def _hidden(self, m: Micro) -> Tensor:
        """(b, t, d) final post-norm hidden states h_t of the response positions, detached."""
        backbone = self.theta.module.get_decoder()
        return response_outputs(backbone, backbone, m, "last_hidden_state")

    @torch.no_grad()
    def compute_old_logprobs(self, batch: TrajectoryBatch,
                             candidates: list[float] | None = None) -> dict[str, Tensor]:
        """No-grad pass over this rank's slice, micro-batched, with the recorded batch.tau.

        Returns CPU tensors, 0 at padding: old_logp (B, T), entropy (B, T) of softmax(z / tau),
        entropy_untempered (B, T); loglik (B, K) TAMPO l_k from the same logits when `candidates`
        are given; ref_logp (B, T) under the frozen reference when learner.kl_coef > 0.
        With one optimizer step per batch (learner.mini_batches = 1) `train_step` does not call
        this: the update's own forward gives the same values (`update_theta(batch, None)`).
        """
        B, T = batch.response_ids.shape
        self._check_equal_slices(B)
        out = self._old_buffers(B, T, candidates)
        for rows in by_length(batch, torch.arange(B)).split(self.cfg.micro_batch_size):
            m = make_micro(batch, rows, self.device, self.share_prompt)
            tau = m.take(batch.tau, self.device)
            ref = self._ref_logp(m, tau)  # before theta's logits: one (b, t, V) tensor at a time
            self._record_old(out, m, self._logits(self.theta, m), tau, candidates, ref)
        return out

    @torch.no_grad()
    def _ref_logp(self, m: Micro, tau: Tensor) -> Tensor | None:
        """(b, t) log-probs of the response tokens under the frozen reference (None without)."""
        if self.ref is None:
            return None
        cfg = self.cfg
        return token_logprobs(self._logits(self.ref, m), m.tokens, tau, cfg.logprob_chunk,
                              m.resp_mask, cfg.logprob_impl)

    def _old_buffers(self, B: int, T: int, candidates: list[float] | None) -> dict[str, Tensor]:
        names = ["old_logp", "entropy", "entropy_untempered"] + (["ref_logp"] if self.ref else [])
        out = {k: torch.zeros(B, T) for k in names}
        if candidates is not None:
            out["loglik"] = torch.zeros(B, len(candidates))
        return out

    @torch.no_grad()
    def _record_old(self, out: dict[str, Tensor], m: Micro, logits: Tensor, tau: Tensor,
                    candidates: list[float] | None, ref_logp: Tensor | None) -> None:
        """The old-pass values of micro-batch m from its (b, t, V) logits (and the reference's
        log-probs) into `out`'s rows: old_logp, entropy, entropy_untempered[, ref_logp, loglik]."""
        chunk, impl, mask = self.cfg.logprob_chunk, self.cfg.logprob_impl, m.resp_mask
        vals = old_pass_stats(logits.detach(), m.tokens, tau, mask, candidates, chunk, impl)
        if candidates is not None:
            out["loglik"][m.rows] = vals.pop("loglik").cpu()
        if ref_logp is not None:
            vals["ref_logp"] = ref_logp
        for k, v in vals.items():
            out[k][m.rows, : m.t] = torch.where(mask, v, torch.zeros_like(v)).float().cpu()

    # ------------------------------------------------------------------ updates

    def train_step(self, batch: TrajectoryBatch, phase: str,
                   candidates: list[float] | None = None) -> tuple[dict[str, float], dict | None]:
        """One training step on this rank's slice of the FULL scored batch (the actor entry point).

        phase: theta | phi | joint (phi, then theta, both from the rollout's theta). Returns
        (stats, meta input): with TAMPO `candidates`, {'loglik' (b, K), 'advantages' (b,)} of this
        slice and 'rows' (the step's trajectory count, on rank 0) for the meta actor, else None.
        With learner.skip_zero_adv the zero-advantage rows are dropped first (`informative_rows`).
        """
        if phase not in ("theta", "phi", "joint"):
            raise ValueError(f"phase ({phase!r}) must be theta, phi or joint")
        t_start = time.perf_counter()
        rows_in = len(batch)
        stats: dict[str, float] = {}
        if self.cfg.skip_zero_adv:
            require_advantages(batch)
            batch = batch.select(informative_rows(batch.advantages, self.world_size,
                                                  self.cfg.mini_batches))
            stats["actor/kept_frac"] = len(batch) / rows_in
        part = batch.split(self.world_size)[self.rank] if self.world_size > 1 else batch
        theta = phase in ("theta", "joint")
        # one optimizer step per batch: log pi_old = log pi_theta of the update's own forward
        one_pass = theta and self.cfg.mini_batches == 1
        old = None
        if (theta or candidates) and not one_pass:
            t0 = time.perf_counter()
            old = self.compute_old_logprobs(part, candidates or None)
            stats["timing_s/old_log_prob"] = time.perf_counter() - t0
        if phase in ("phi", "joint"):  # theta does not change here: the old values stay valid
            t0 = time.perf_counter()
            stats.update(self.update_phi(part))
            stats["timing_s/update_phi"] = time.perf_counter() - t0
        if theta:
            t0 = time.perf_counter()
            theta_stats, old = self.update_theta(part, old, candidates or None)
            stats.update(theta_stats)
            stats["timing_s/update_actor"] = time.perf_counter() - t0
        if old is not None:
            stats.update(mismatch_stats(part, old["old_logp"]))
            stats.update(tau_entropy_stats(part, old["entropy_untempered"]))
        meta = None
        if candidates:  # TAMPO averages over ALL the step's trajectories, dropped ones included
            meta = {"loglik": old["loglik"], "advantages": part.advantages,
                    "rows": rows_in if self.rank == 0 else 0}
        stats["timing_s/learner"] = time.perf_counter() - t_start  # the whole call (idle ratio)
        return stats, meta

    def update_theta(self, batch: TrajectoryBatch, old: dict[str, Tensor] | None = None,
                     candidates: list[float] | None = None
                     ) -> tuple[dict[str, float], dict[str, Tensor]]:
        """GRPO theta-phase on this rank's slice; returns (stats, old).

        old: `compute_old_logprobs` on the same slice. None (only with learner.mini_batches = 1):
        one pass. No optimizer step happens before the last micro-batch, so log pi_old is the
        update's own log pi_theta, detached (ratio 1, as TRL with num_iterations=1), and the other
        old-pass values (with TAMPO's loglik for `candidates`) come from the same logits: the
        returned `old` is then filled from them.

        Stats use verl's names: actor/{pg_loss, pg_clipfrac, ppo_kl, ratio_mean, ratio_max,
        grad_norm, lr, entropy, skipped_nonfinite, optimizer_steps}, plus actor/{tis_weight_mean,
        tis_clipfrac} with TIS, actor/pg_clipfrac_lower with the dual-clip
        (learner.clip_ratio_c), actor/kl_loss with KL, actor/entropy_loss with the entropy bonus.
        """
        cfg = self.cfg
        require_advantages(batch)
        one_pass = old is None
        if one_pass and cfg.mini_batches != 1:
            raise ValueError(f"update_theta without `old` needs learner.mini_batches = 1 (it is "
                             f"{cfg.mini_batches}): after the first optimizer step the update's "
                             f"forward is no longer pi_old; pass compute_old_logprobs(batch)")
        if not one_pass and cfg.kl_coef > 0 and "ref_logp" not in old:
            raise ValueError("learner.kl_coef > 0 but `old` has no ref_logp; pass the dict "
                             "compute_old_logprobs returned for this same batch slice")
        if one_pass:
            self._check_equal_slices(len(batch))
            old = self._old_buffers(*batch.response_ids.shape, candidates)
        dev, chunk = self.device, cfg.logprob_chunk

        def loss_fn(m: Micro, denominator: float, max_len: int):
            tau, mask = m.take(batch.tau, dev), m.resp_mask
            if one_pass:  # the reference first: one (b, t, V) logits tensor at a time
                ref = self._ref_logp(m, tau)
            else:
                ref = m.take(old["ref_logp"], dev) if self.ref is not None else None
            logits = self._logits(self.theta, m)  # (b, t, V)
            logp = token_logprobs(logits, m.tokens, tau, chunk, mask, cfg.logprob_impl)
            if one_pass:
                self._record_old(old, m, logits, tau, candidates, ref)
                old_logp = logp.detach()
            else:
                old_logp = m.take(old["old_logp"], dev)
            ent = token_entropy(logits, tau, chunk, mask) if cfg.entropy_coef > 0 else None
            loss, stats = policy_loss(
                logp, old_logp, m.take(batch.advantages, dev), mask,
                cfg.clip_low, cfg.clip_high, cfg.loss_agg, max_len,
                rollout_logp=m.take(batch.logp_rollout, dev), tis_cap=cfg.tis_cap,
                ref_logp=ref, kl_coef=cfg.kl_coef, entropy=ent, entropy_coef=cfg.entropy_coef,
                denominator=denominator, clip_ratio_c=cfg.clip_ratio_c)
            return loss, stats, logp

        lr = cfg.lr * ds_utils.warmup_factor(self.updates["theta"], cfg.warmup_steps)
        stats = self._update(self.theta, self._theta_own_check, batch, loss_fn, lr)
        self.updates["theta"] += 1
        if "entropy" in stats:  # the bonus term's entropy (current policy, agg'd like the loss)
            stats["entropy_loss"] = stats.pop("entropy")
        stats["entropy"] = token_mean(old["entropy"], batch.response_mask)  # verl: old pass
        return {f"actor/{k}": v for k, v in stats.items()}, old

    def update_phi(self, batch: TrajectoryBatch) -> dict[str, float]:
        """IntroLLM phi-phase: GRPO on the recorded temperature actions, backbone frozen.

        Returns phi/{pg_loss, pg_clipfrac, ppo_kl, ratio_mean, ratio_max, grad_norm, lr,
        gate_entropy, beta_entropy, skipped_nonfinite, optimizer_steps}, plus
        phi/pg_clipfrac_lower with the dual-clip (learner.clip_ratio_c).
        """
        if self.phi is None:
            raise RuntimeError("update_phi needs the temperature head: build the LearnerWorker "
                               "with phi=PhiTrainingConfig(...) (meta=introllm)")
        require_advantages(batch)
        for name in ("gate", "z", "logp_phi"):
            if getattr(batch, name) is None:
                raise ValueError(f"batch.{name} is None: update_phi needs the IntroLLM action "
                                 f"records; generate the batch with meta=introllm")
        cfg, dev = self.cfg, self.device
        head = self.phi.module.temperature_head

        def loss_fn(m: Micro, denominator: float, max_len: int):
            mask = m.resp_mask
            hidden = self._hidden(m)  # (b, t, d), no grad into theta
            forced = torch.zeros_like(mask)
            forced[:, 0] = True  # the head always decides the first temperature
            new = self.phi(hidden, m.take(batch.gate, dev), m.take(batch.z, dev), forced)  # (b, t)
            loss, stats = phi_policy_loss(new, m.take(batch.logp_phi, dev),
                                          m.take(batch.advantages, dev), mask, cfg.clip_low,
                                          cfg.clip_high, cfg.loss_agg, max_len, denominator,
                                          clip_ratio_c=cfg.clip_ratio_c)
            with torch.no_grad():
                gate_entropy, beta_entropy = head.entropy(hidden)
            stats["gate_entropy"] = masked_mean(gate_entropy, mask)
            stats["beta_entropy"] = masked_mean(beta_entropy, mask)
            return loss, stats, new

        stats = self._update(self.phi, True, batch, loss_fn, self.phi_cfg.lr)
        self.updates["phi"] += 1
        return {f"phi/{k}": v for k, v in stats.items()}

    def _update(self, engine, own_check: bool, batch: TrajectoryBatch, loss_fn, lr: float) -> dict:
        """PPO mini-batches of micro-batches for either engine; returns stats averaged over
        mini-batches.

        Loss scaling. With the global denominator D of mini-batch k (its tokens, sequences or rows
        over ALL ranks, per learner.loss_agg), micro-batch i on rank r has loss L_ri whose sum
        over (r, i) is the mini-batch loss L; we want the gradient dL = sum_ri dL_ri.
        engine.backward(x) divides x by gradient_accumulation_steps (GAS, = 1 here since the
        worker sets the boundary itself) and accumulates; at the boundary DeepSpeed AVERAGES the
        accumulated gradients over the W data-parallel ranks (all-reduce / reduce-scatter, then
        / W). Backpropagating L_ri * W * GAS therefore yields
            (1 / W) sum_r sum_i (W * GAS * dL_ri) / GAS = sum_ri dL_ri = dL.
        """
        cfg = self.cfg
        B, T = batch.response_ids.shape
        m = cfg.mini_batches
        self._check_equal_slices(B)
        if B < m:
            raise ValueError(f"learner.mini_batches ({m}) exceeds the {B} responses per rank; "
                             f"use fewer mini-batches or more prompts per step")
        ds_utils.set_lr(engine, lr)
        mask = batch.response_mask
        groups = [torch.arange(k, B, m) for k in range(m)]  # strided: see the module docstring
        counts = torch.tensor([[float(mask[g].sum()), float((mask[g].sum(-1) > 0).sum()), len(g)]
                               for g in groups], dtype=torch.float64)  # (m, 3) tokens, seqs, rows
        ds_utils.all_reduce(counts)
        max_len = int(ds_utils.all_reduce(torch.tensor([T]), "max"))  # Dr.GRPO's constant
        column = {"token-mean": 0, "seq-mean-token-mean": 1,
                  "seq-mean-token-sum-norm": 2}[cfg.loss_agg]
        scale = self.world_size * engine.gradient_accumulation_steps()
        per_mb = []
        for g, count in zip(groups, counts):
            denominator = max(float(count[column]), 1.0)
            sums: dict[str, Tensor] = {}
            micro = by_length(batch, g).split(cfg.micro_batch_size)
            for i, rows in enumerate(micro):
                mb = make_micro(batch, rows, self.device, self.share_prompt)
                loss, stats, anchor = loss_fn(mb, denominator, max_len)
                if not torch.isfinite(loss):
                    # poison the gradient so the finite-norm check below skips the step on every
                    # rank (gradients are all-reduced); backward still runs to keep ZeRO's
                    # collectives in step across ranks
                    loss = anchor.sum() * float("nan")
                engine.set_gradient_accumulation_boundary(i == len(micro) - 1)
                engine.backward(loss * scale)
                accumulate(sums, stats, mb.resp_mask.sum())
            out = reduce_ranks(sums, float(count[0]))
            out["grad_norm"], skipped = self._step(engine, own_check)
            out["skipped_nonfinite"] = float(skipped)
            per_mb.append(out)
        return average(per_mb, lr)

    def _step(self, engine, own_check: bool) -> tuple[float, bool]:
        """Optimizer step at the accumulation boundary unless the gradient is non-finite.

        own_check (stage 0, fp32: DeepSpeed steps the bare AdamW): the norm of the all-reduced
        .grad, identical on every rank. Otherwise DeepSpeed's ZeRO / bf16 / fp16 optimizer checks
        the global norm itself and skips (engine.skipped_steps counts it).
        """
        if own_check:
            norm = ds_utils.grad_norm_of_params(engine.module)
            if not math.isfinite(norm):
                engine.zero_grad()
                return norm, True
            engine.step()
            return norm, False
        skipped_before = engine.skipped_steps
        engine.step()
        norm = engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return norm, engine.skipped_steps > skipped_before

    def _check_equal_slices(self, rows: int) -> None:
        """All ranks must run the same number of forwards/backwards (ZeRO collectives)."""
        if self.world_size == 1:
            return
        x = ds_utils.all_reduce(torch.tensor([rows, -rows]), "max")
        if int(x[0]) != -int(x[1]):
            raise ValueError(f"learner ranks got slices of {-int(x[1])}..{int(x[0])} responses; "
                             f"give every rank an equal slice (TrajectoryBatch.split(world_size))")

    def ping(self) -> int:
        return os.getpid()

    # ------------------------------------------------------------------ weights and checkpoints

    def get_weights(self, which: str = "theta") -> dict[str, Tensor]:
        """Full CPU state dicts for weight sync: theta with HF names, phi as `temperature_head.*`.

        Under ZeRO-3 every rank must call it (a gather); all ranks get the full dict.
        """
        if which not in ("theta", "phi", "all"):
            raise ValueError(f"which ({which!r}) must be 'theta', 'phi' or 'all'")
        if which != "theta" and self.phi is None:
            raise RuntimeError(f"get_weights({which!r}): this learner has no temperature head")
        out = {}
        if which in ("theta", "all"):
            out.update(ds_utils.full_state_dict(self.theta, self.zero_stage))
        if which in ("phi", "all"):
            out.update(ds_utils.full_state_dict(self.phi, 0))
        return out

    def weight_sync_address(self) -> tuple[str, int, str]:
        """(this node's address, a free port, the transfer backend for this rank's device):
        where and how the collective weight sync's group meets (this rank, 0, hosts it)."""
        from rollout.weight_transfer import backend_for

        host = "127.0.0.1"
        try:
            import ray

            if ray.is_initialized():
                host = ray.util.get_node_ip_address()
        except ImportError:
            pass
        return host, ds_utils.free_port(host), backend_for(self.device.type == "cuda")

    def init_weight_sync(self, backend: str, host: str, port: int, world_size: int,
                         actors: list, ranks_per_engine: list[int]) -> None:
        """Join (rank 0: form, with every engine worker) the group of the collective weight sync
        (``rollout.weight_transfer``), closing an earlier one; every rank calls it. ``actors``:
        the rollout actors (Ray handles), ``ranks_per_engine``: their workers each."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        from learner.weight_source import module_source
        from rollout.weight_transfer import RolloutSyncClient, register, trainer_init_info

        register()
        self.shutdown_weight_sync()
        parts = {"theta": (self.theta.module, self.zero_stage == 3)}
        if self.phi is not None:
            parts["phi"] = (self.phi.module, False)
        self._sync_source = module_source(parts)
        self._sync_client = RolloutSyncClient(actors, list(ranks_per_engine))
        info = trainer_init_info(backend, self.rank, host, port, world_size)
        self._sync = WeightTransferTrainerFactory.trainer_init(
            info, client=self._sync_client, source=self._sync_source)

    def send_weights(self, which: str, version: int | None = None, full: bool = False) -> float:
        """One collective weight sync of ``which`` (theta | phi | all) to every engine; every rank
        calls it (ZeRO-3 gathers one layer at a time), rank 0 sends. ``version``/``full`` reach
        the rollout actors (``RolloutWorker.finish_weight_update``). Returns its seconds."""
        if getattr(self, "_sync", None) is None:
            raise RuntimeError("send_weights before init_weight_sync")
        parts = {"theta": ("theta",), "phi": ("phi",), "all": tuple(self._sync_source.parts)}
        if which not in parts:
            raise ValueError(f"which ({which!r}) must be 'theta', 'phi' or 'all'")
        from rollout.weight_transfer import SyncRound

        self._sync_source.select(parts[which])
        self._sync_client.round = SyncRound(version, full)
        t0 = time.perf_counter()
        try:
            self._sync.send_weights()
        except BaseException:
            self._sync_source.drain()  # finish this round's gathers: no rank waits in one
            raise
        return time.perf_counter() - t0

    def shutdown_weight_sync(self) -> None:
        """Leave the weight-sync group (rank 0 also asks the engines to leave it)."""
        sync, self._sync = getattr(self, "_sync", None), None
        if sync is None:
            return
        if sync.is_sender:
            try:
                self._sync_client.shutdown_weight_transfer_engine()
            except Exception:  # noqa: BLE001 - an engine that died has left already
                pass
        sync.shutdown()

    def write_model(self, out: str) -> dict[str, dict]:
        """theta (and phi) as Hugging Face safetensors files in ``out``
        (``learner.checkpoint.write_weights``): every rank calls it (ZeRO-3 gathers one layer
        group at a time) and writes and hashes its share. Returns {path: {"bytes", "sha256"}}
        of the files it wrote."""
        head = self.phi.module if self.phi is not None else None
        files = checkpoint.write_weights(self.theta.module, self.zero_stage == 3, head, Path(out),
                                         self.rank, self.world_size)
        return {str(p): e for p, e in files.items()}

    def save_checkpoint(self, ckpt: str) -> dict[str, dict]:
        """This rank's part of the checkpoint folder ``ckpt`` (``learner.checkpoint``): its share
        of ``model/`` and its ``learner_rank{r}/`` (its optimizer shard, RNG states, schedule
        positions). Every rank calls it, all at once. Returns {path: {"bytes", "sha256"}} of the
        files it wrote (hashed as written)."""
        d = Path(ckpt)
        written = self.write_model(str(d / checkpoint.MODEL))
        optimizers = {}
        if self.zero_stage > 0 or self.rank == 0:  # ZeRO-0: every rank holds the same state
            optimizers["theta"] = self.theta.optimizer.state_dict()
        if self.phi is not None and self.rank == 0:  # the head is replicated
            optimizers["phi"] = self.phi.optimizer.state_dict()
        meta = {"world_size": self.world_size, "zero_stage": self.zero_stage,
                "updates": dict(self.updates)}
        files = checkpoint.write_rank(checkpoint.rank_dir(d, self.rank), meta, optimizers,
                                      checkpoint.rng_state())
        written.update({str(p): e for p, e in files.items()})
        return written

    def load_checkpoint(self, ckpt: str) -> None:
        """Restore this rank from the checkpoint folder ``ckpt``, written by as many ranks at the
        same ZeRO stage: under ZeRO-3 theta comes from this rank's own optimizer shard (its fp32
        master weights): no rank reads or gathers the whole model; otherwise from ``model/``
        (every rank holds all of theta anyway)."""
        from safetensors.torch import load_file

        from rollout.vllm_overlay import HEAD_FILE, HEAD_PREFIX

        d = Path(ckpt)
        mine, first = checkpoint.rank_dir(d, self.rank), checkpoint.rank_dir(d, 0)
        meta = checkpoint.read_state(mine)
        if (meta["world_size"], meta["zero_stage"]) != (self.world_size, self.zero_stage):
            raise ValueError(
                f"{d} was written by {meta['world_size']} learner ranks at ZeRO stage "
                f"{meta['zero_stage']}; this learner runs {self.world_size} at stage "
                f"{self.zero_stage}: resume with learner.num_ranks={meta['world_size']} "
                f"learner.zero_stage={meta['zero_stage']}, or start a new run from its weights "
                f"(model.path={d / checkpoint.MODEL}; the optimizer state starts afresh)")
        head_file = d / checkpoint.MODEL / HEAD_FILE
        if head_file.is_file() != (self.phi is not None):
            raise ValueError("the checkpoint and this learner disagree on having a temperature "
                             "head (meta=introllm); resume with the same meta strategy")
        if self.zero_stage < 3:
            theta = checkpoint.read_weights(d / checkpoint.MODEL)
            with torch.no_grad():
                for name, p in self.theta.module.named_parameters():
                    p.copy_(theta[name])
        state = (mine if self.zero_stage > 0 else first) / checkpoint.optimizer_file("theta")
        _load_optimizer(self.theta, checkpoint.safe_load(state))
        if self.phi is not None:
            head = load_file(str(head_file))
            self.phi.module.temperature_head.load_state_dict(
                {k[len(HEAD_PREFIX):]: v for k, v in head.items()})
            _load_optimizer(self.phi,
                            checkpoint.safe_load(first / checkpoint.optimizer_file("phi")))
        self.updates = dict(meta["updates"])
        checkpoint.set_rng_state(checkpoint.safe_load(mine / checkpoint.RNG))


def _load_optimizer(engine, state: dict) -> None:
    """An optimizer state as saved: a torch optimizer's own; DeepSpeed's ZeRO / bf16 shard of
    this rank (a list indexed by data-parallel rank, of which a rigid load reads this rank's;
    the fp32 master weights are copied into the parameters); or, at ZeRO-0 in 16 bits,
    DeepSpeed's mixed-precision wrapper's own (``FP16_UnfusedOptimizer``: one dict, its fp32
    masters inside)."""
    import inspect

    load = engine.optimizer.load_state_dict
    if "load_from_fp32_weights" in inspect.signature(load).parameters:  # ZeRO / bf16
        load([state] * ds_utils.world_size(), load_optimizer_states=True,
             load_from_fp32_weights=True)
    else:
        load(state)
