"""The ``learner`` group's schemas: ``LearnerConfig`` and IntroLLM's phi-phase settings
``PhiTrainingConfig`` (the ``meta`` keys that are not the strategy's arguments), and the
vocabulary chunk size ``LOGPROB_CHUNK``. The schemas are re-exported by ``launch.config``,
which composes them into the run's ``RunConfig``. No heavy imports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from launch.checks import require as _require

LOGPROB_CHUNK = 1024
"""(our default) rows per chunk of the passes over the vocabulary (log-probs, entropies, TAMPO's
l_k): the largest temporary is one (chunk, V) fp32 tensor, 622 MB at V = 151,936. The default of
learner.logprob_chunk and of the functions in learner.logprobs."""


@dataclass(frozen=True)
class LearnerConfig:
    num_ranks: int = 1
    """DeepSpeed ranks (learner actors)"""
    zero_stage: int = 0
    lr: float = 1e-4
    """theta learning rate (AdamW); 1e-6 for real models"""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    micro_batch_size: int = 16
    mini_batches: int = 1
    """optimizer steps per rollout batch (PPO mini-batches)"""
    clip_low: float = 0.2
    clip_high: float = 0.28
    clip_ratio_c: Optional[float] = None
    """verl's dual-clip: for A < 0 the token loss is capped at -clip_ratio_c * A (> 1; verl: 3.0);
    null = off (our default: see conf/learner/grpo.yaml)"""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum-norm"""
    norm_adv_by_std: bool = True
    kl_coef: float = 0.0
    """k3 KL to a frozen reference; 0 = no reference model is loaded"""
    tis_cap: Optional[float] = 2.0
    """truncated importance sampling cap vs the engine's log-probs; null = off"""
    entropy_coef: float = 0.0
    logprob_chunk: int = LOGPROB_CHUNK
    """tokens per chunk when computing log-probs over the vocabulary"""
    logprob_impl: str = "auto"
    """auto | torch | triton: triton = one pass over the logits for every tempered log-prob,
    entropy and TAMPO l_k (learner.fused_logprobs); auto = triton on CUDA when installed"""
    skip_zero_adv: bool = True
    """drop zero-advantage responses (groups whose rewards are all equal) from the learner batch:
    they carry no policy gradient, only cost (DAPO's filter without re-sampling) (our default)"""
    share_prompt: bool = True
    """rows of a micro-batch with the same prompt (a GRPO group) run it through the model once
    and continue from its KV cache: the same values and gradients, less compute (our default;
    off where gradient_checkpointing is on: checkpointed layers take no KV cache)"""
    gradient_checkpointing: bool = False
    """recompute each decoder layer's activations in the backward pass instead of keeping them
    (transformers' gradient checkpointing, non-reentrant): a theta step holds one layer's
    activations instead of all of them, for ~30 % more step time. Use it when activations, not
    the ZeRO state, fill the device (long responses, big micro-batches)"""
    offload_optimizer: bool = False
    """DeepSpeed's ZeRO-Offload: the optimizer state (fp32 master weights, Adam moments: 12 of
    ZeRO's ~16 bytes per parameter) and its step live in CPU memory (zero_stage >= 1). Use it
    when the ZeRO state does not fit the devices (e.g. 32B on 8 x 80 GB without it); costs step
    time (the update runs on the CPU, gradients cross to it)"""
    offload_params: bool = False
    """DeepSpeed's ZeRO-Infinity parameter offload: the parameter partitions live in CPU memory
    and are gathered to the device layer by layer (zero_stage = 3). Use it with
    offload_optimizer when even the parameters do not fit (70B on 8 x 80 GB); slowest"""

    def __post_init__(self):
        _require(self.lr > 0, "learner.lr", self.lr, "must be > 0", "set e.g. learner.lr=1e-6")
        _require(self.num_ranks >= 1, "learner.num_ranks", self.num_ranks, "must be >= 1",
                 "set e.g. learner.num_ranks=1")
        _require(self.zero_stage in (0, 1, 2, 3), "learner.zero_stage", self.zero_stage,
                 "must be 0, 1, 2 or 3", "set e.g. learner.zero_stage=2")
        _require(0 <= self.clip_low < 1, "learner.clip_low", self.clip_low, "must be in [0, 1)",
                 "set e.g. learner.clip_low=0.2")
        _require(self.clip_high >= 0, "learner.clip_high", self.clip_high, "must be >= 0",
                 "set e.g. learner.clip_high=0.28")
        _require(self.clip_ratio_c is None or self.clip_ratio_c > 1, "learner.clip_ratio_c",
                 self.clip_ratio_c, "must be > 1 or null",
                 "set e.g. learner.clip_ratio_c=3.0 (verl's default), or null to disable it")
        _require(self.logprob_impl in ("auto", "torch", "triton"), "learner.logprob_impl",
                 self.logprob_impl, "must be auto, torch or triton",
                 "set learner.logprob_impl=auto (triton on CUDA, torch on CPU)")
        modes = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
        _require(self.loss_agg in modes, "learner.loss_agg", self.loss_agg,
                 f"must be one of {modes}", "set e.g. learner.loss_agg=token-mean")
        _require(self.kl_coef >= 0, "learner.kl_coef", self.kl_coef, "must be >= 0",
                 "set learner.kl_coef=0 to disable the KL term")
        _require(self.tis_cap is None or self.tis_cap >= 1, "learner.tis_cap", self.tis_cap,
                 "must be >= 1 or null", "set e.g. learner.tis_cap=2.0 (or null to disable)")
        for key in ("grad_clip", "micro_batch_size", "mini_batches", "logprob_chunk"):
            value = getattr(self, key)
            _require(value > 0, f"learner.{key}", value, "must be > 0",
                     f"set e.g. learner.{key}={getattr(LearnerConfig, key)}")
        _require(self.weight_decay >= 0 and self.warmup_steps >= 0 and self.entropy_coef >= 0,
                 "learner.weight_decay/warmup_steps/entropy_coef",
                 (self.weight_decay, self.warmup_steps, self.entropy_coef), "must be >= 0",
                 "use a non-negative value")
        _require(not self.offload_optimizer or self.zero_stage >= 1, "learner.offload_optimizer",
                 self.offload_optimizer, "needs learner.zero_stage >= 1 (it offloads ZeRO's "
                 "partitioned optimizer state)", "set learner.zero_stage=3 (or 2)")
        _require(not self.offload_params or self.zero_stage == 3, "learner.offload_params",
                 self.offload_params, "needs learner.zero_stage=3 (only ZeRO-3 partitions the "
                 "parameters)", "set learner.zero_stage=3")
        _require(not (self.skip_zero_adv and (self.kl_coef > 0 or self.entropy_coef > 0)),
                 "learner.skip_zero_adv", self.skip_zero_adv,
                 "must be false when learner.kl_coef or learner.entropy_coef > 0 (zero-advantage "
                 "responses still carry the KL and entropy gradients)",
                 "set learner.skip_zero_adv=false")


@dataclass(frozen=True)
class PhiTrainingConfig:
    """IntroLLM's phi-phase settings (the ``meta`` keys that are not the strategy's arguments)."""

    schedule: str = "alternate"
    """alternate (coordinate ascent, fresh rollouts per phase) | joint (both on one batch)"""
    phase_len: int = 1
    phi_first: bool = True
    lr: float = 3e-3
    """phi learning rate (AdamW), sized for the embedded tiny model; ~1e-4 for real models"""
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self):
        _require(self.schedule in ("alternate", "joint"), "meta.schedule", self.schedule,
                 "must be alternate or joint", "set e.g. meta.schedule=alternate")
        _require(self.phase_len >= 1, "meta.phase_len", self.phase_len, "must be >= 1",
                 "set e.g. meta.phase_len=1")
        _require(self.lr > 0, "meta.lr", self.lr, "must be > 0", "set e.g. meta.lr=1e-4")
        _require(self.grad_clip > 0, "meta.grad_clip", self.grad_clip, "must be > 0",
                 "set e.g. meta.grad_clip=1.0")
