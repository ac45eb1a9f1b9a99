"""Typed run configuration: Hydra composes YAML from ``conf/``, this module validates it.

``validate(cfg)`` turns the composed ``DictConfig`` into a frozen ``RunConfig`` before anything
starts. Every group has a dataclass schema; unknown keys (a ``+key=value`` typo, which Hydra
accepts silently), wrong types and out-of-range values raise ``ConfigError`` with the key, the
value, the rule and a fix. The ``meta`` group is checked against the strategy's own constructor
(``meta/``), so a strategy's arguments and their range checks live in one place.

Values the system derives (the model's hidden size for IntroLLM's head, the number of steps for
the linear schedule) are filled in by ``strategy_kwargs``, not written in YAML.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration value breaks a rule; the message names key, value, rule and fix."""


def _require(ok: bool, key: str, value: Any, rule: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key} ({value!r}) {rule}; {fix}")


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class ModelConfig:
    path: Optional[str] = None
    """local Hugging Face model folder; null = the embedded tiny model (built on first use)"""
    dtype: str = "float32"
    """float32 | bfloat16 | float16 (float32 on CPU)"""
    cache_dir: Optional[str] = None
    """where the embedded model is cached; null = $TEMPO_CACHE or ~/.cache/tempo-rl"""

    def __post_init__(self):
        _require(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype", self.dtype,
                 "must be float32, bfloat16 or float16", "set e.g. model.dtype=float32")


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    """synthetic (embedded tasks) | jsonl | parquet"""
    train_path: Optional[str] = None
    eval_path: Optional[str] = None
    format: str = "auto"
    """row schema of local files: auto | math | gsm8k | answer (problem + answer)"""
    train_size: int = 20000
    """synthetic: number of training problems generated"""
    eval_size: int = 500
    """synthetic: held-out problems (50 per family x level with the defaults)"""
    families: tuple[str, ...] = ("arith", "countdown")
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    prompt_template: str = "chat"
    """chat (the tokenizer's chat template) | plain"""
    instruction: str = ""
    """appended to every question, e.g. 'Put your final answer within \\boxed{}.'"""
    max_bad_fraction: float = 0.1
    """malformed rows are skipped and counted; more than this fraction is an error"""

    def __post_init__(self):
        _require(self.source in ("synthetic", "jsonl", "parquet"), "data.source", self.source,
                 "must be synthetic, jsonl or parquet", "set e.g. data.source=synthetic")
        _require(self.format in ("auto", "math", "gsm8k", "answer"), "data.format", self.format,
                 "must be auto, math, gsm8k or answer", "set data.format=auto to detect it")
        _require(self.prompt_template in ("chat", "plain"), "data.prompt_template",
                 self.prompt_template, "must be chat or plain", "set data.prompt_template=chat")
        if self.source != "synthetic":
            _require(bool(self.train_path), "data.train_path", self.train_path,
                     f"is required when data.source={self.source}",
                     f"set data.train_path=/path/to/train.{self.source}")
        _require(self.train_size >= 1, "data.train_size", self.train_size, "must be >= 1",
                 "set e.g. data.train_size=20000")
        _require(self.eval_size >= 0, "data.eval_size", self.eval_size, "must be >= 0",
                 "set e.g. data.eval_size=500")
        _require(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction",
                 self.max_bad_fraction, "must be in [0, 1]", "set e.g. data.max_bad_fraction=0.1")
        from data.synthetic import FAMILIES, LEVELS

        for fam in self.families:
            _require(fam in FAMILIES, "data.families", fam, f"must be one of {FAMILIES}",
                     f"set e.g. data.families=[{','.join(FAMILIES)}]")
        for lvl in self.levels:
            _require(lvl in LEVELS, "data.levels", lvl, f"must be one of {LEVELS}",
                     "set e.g. data.levels=[1,2,3,4,5]")


@dataclass(frozen=True)
class RolloutConfig:
    engine: str = "hf"
    """hf (transformers, the reference) | vllm (patched per-token-temperature sampler)"""
    num_actors: int = 1
    group_size: int = 8
    """G responses per prompt"""
    max_new_tokens: int = 64
    max_prompt_tokens: int = 128
    batch_size: int = 64
    """hf engine: sequences generated together"""
    kv_cache_gb: int = 1
    """vllm on CPU: VLLM_CPU_KVCACHE_SPACE"""
    gpu_memory_utilization: float = 0.5
    max_num_seqs: int = 256
    enforce_eager: Optional[bool] = None
    """vllm: null = CPU eager, GPU CUDA graphs (the head runs in compute_logits, outside them)"""
    vllm_runner: str = "auto"
    """vllm model runner: auto (vLLM's choice: V2 on GPU for dense models, V1 on CPU) | v1 | v2"""
    engine_core: str = "auto"
    """vllm engine core: auto (GPU: its own process, vLLM's default; CPU: inproc, measured
    faster there) | inproc (in the rollout actor) | process (its own process)"""
    tensor_parallel_size: int = 1
    """vllm: ranks per engine (one worker process each when > 1)"""
    top_p: float = 1.0
    """must stay 1.0: vLLM's log-probs must be those of softmax(z / tau) (see README)"""
    top_k: int = -1
    """must stay -1 (off), for the same reason"""

    def __post_init__(self):
        _require(self.engine in ("hf", "vllm"), "rollout.engine", self.engine,
                 "must be hf or vllm", "choose the group option rollout=hf or rollout=vllm")
        _require(self.vllm_runner in ("auto", "v1", "v2"), "rollout.vllm_runner", self.vllm_runner,
                 "must be auto, v1 or v2", "set rollout.vllm_runner=auto")
        _require(self.engine_core in ("auto", "inproc", "process"), "rollout.engine_core",
                 self.engine_core, "must be auto, inproc or process", "set rollout.engine_core=auto")
        for key in ("num_actors", "group_size", "max_new_tokens", "max_prompt_tokens",
                    "batch_size", "kv_cache_gb", "max_num_seqs", "tensor_parallel_size"):
            value = getattr(self, key)
            _require(value >= 1, f"rollout.{key}", value, "must be >= 1",
                     f"set e.g. rollout.{key}={getattr(RolloutConfig, key)}")
        _require(0.0 < self.gpu_memory_utilization <= 1.0, "rollout.gpu_memory_utilization",
                 self.gpu_memory_utilization, "must be in (0, 1]",
                 "set e.g. rollout.gpu_memory_utilization=0.5")
        _require(self.top_p == 1.0 and self.top_k == -1, "rollout.top_p/top_k",
                 (self.top_p, self.top_k),
                 "must be 1.0/-1: truncated sampling would make the recorded log-probs differ from "
                 "log_softmax(z/tau), breaking the per-token temperature invariant",
                 "remove the override (control exploration with meta=... instead)")


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
    and continue from its KV cache: the same values and gradients, less compute (our default)"""

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


@dataclass(frozen=True)
class MetaConfig:
    """The temperature strategy: ``name`` plus the strategy's constructor arguments."""

    name: str = "fixed"
    args: dict = field(default_factory=dict)
    """the strategy's own constructor arguments (validated by the constructor)"""
    phi: Optional[PhiTrainingConfig] = None
    """IntroLLM only: phi-phase training settings"""


@dataclass(frozen=True)
class RewardConfig:
    num_workers: int = 2
    """CPU worker processes scoring answers; 0 = in-process (no hard time limit)"""
    timeout_s: float = 5.0
    """per-answer time limit; a time-out scores 0 and is counted"""
    format_weight: float = 0.0
    """weight of the optional format reward (has a \\boxed{}); reward stays in [0, 1]"""

    def __post_init__(self):
        _require(self.num_workers >= 0, "reward.num_workers", self.num_workers, "must be >= 0",
                 "set e.g. reward.num_workers=2")
        _require(self.timeout_s > 0, "reward.timeout_s", self.timeout_s, "must be > 0",
                 "set e.g. reward.timeout_s=5")
        _require(0 <= self.format_weight <= 1, "reward.format_weight", self.format_weight,
                 "must be in [0, 1]", "set e.g. reward.format_weight=0.1")


@dataclass(frozen=True)
class ClusterConfig:
    address: Optional[str] = None
    """null = start a local Ray cluster; auto / host:port = join a running one"""
    num_cpus: Optional[int] = None
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    """the dashboard listens on localhost unless you choose otherwise"""
    namespace: str = "tempo-rl"
    placement: str = "none"
    """none (Ray's scheduler places each actor; the one-machine default) | pack | spread (a
    placement group, one bundle per GPU (or CPU), packed onto few nodes or spread across them)"""
    colocate: bool = False
    """false: engines and learner ranks on separate bundles; true: engine i and learner rank i
    share bundle i (half a GPU each); needs cluster.placement=pack or spread"""
    device: str = "auto"
    """auto (GPUs if the Ray cluster has any) | cpu | gpu: what rollout engines and learner ranks
    run on"""
    placement_timeout_s: float = 300.0
    """how long to wait for the placement group before stopping with an error"""

    def __post_init__(self):
        _require(self.placement in ("none", "pack", "spread"), "cluster.placement", self.placement,
                 "must be none, pack or spread", "set e.g. cluster.placement=pack")
        _require(self.device in ("auto", "cpu", "gpu"), "cluster.device", self.device,
                 "must be auto, cpu or gpu", "set e.g. cluster.device=auto")
        _require(not self.colocate or self.placement != "none", "cluster.colocate", self.colocate,
                 "needs a placement group to put engine i and learner rank i on one device",
                 "set cluster.placement=pack (or spread), or cluster.colocate=false")
        _require(self.placement_timeout_s > 0, "cluster.placement_timeout_s",
                 self.placement_timeout_s, "must be > 0", "set e.g. cluster.placement_timeout_s=300")
        _require(self.num_cpus is None or self.num_cpus >= 1, "cluster.num_cpus", self.num_cpus,
                 "must be >= 1 or null", "set cluster.num_cpus=null to use the machine's cores")


@dataclass(frozen=True)
class TrainerConfig:
    total_steps: int = 120
    prompts_per_step: int = 32
    """P prompts per step; B = P x G responses"""
    save_every: int = 40
    keep_last: int = 2
    dump_every: int = 10
    """rollout dumps with per-token tau every k steps (0 = never)"""
    max_nonfinite_steps: int = 3
    """stop the run after this many steps in a row whose update was skipped for a non-finite
    loss or gradient (each one is skipped and logged)"""
    resume: Optional[str] = None
    """null = start fresh | auto = the newest complete checkpoint under this run folder's
    checkpoints/ (fresh when there is none; pin the folder with hydra.run.dir=...) | a path to a
    checkpoint folder (step_NNNNNN) or to a run folder"""

    def __post_init__(self):
        for key in ("total_steps", "prompts_per_step", "keep_last", "max_nonfinite_steps"):
            value = getattr(self, key)
            _require(value >= 1, f"trainer.{key}", value, "must be >= 1",
                     f"set e.g. trainer.{key}={getattr(TrainerConfig, key)}")
        _require(self.save_every >= 0 and self.dump_every >= 0, "trainer.save_every/dump_every",
                 (self.save_every, self.dump_every), "must be >= 0 (0 = never)",
                 "set e.g. trainer.save_every=10")


@dataclass(frozen=True)
class EvalConfig:
    every: int = 40
    """held-out evaluation every k steps (0 = only at the end)"""
    samples: int = 8
    """k responses per problem for Avg@k / Pass@k / maj@k"""
    temperature_mode: str = "sample"
    """sample (the strategy's temperatures; IntroLLM's head samples its actions) | mean (IntroLLM:
    the Beta mean instead of a draw) | greedy (argmax, no temperature)"""
    checkpoint: Optional[str] = None
    """launch.evaluate only: a checkpoint folder (step_NNNNNN) or run folder whose newest
    checkpoint's theta and phi are evaluated; null = the model folder (model.path) as it is"""
    temperature: Optional[float] = 1.0
    """the per-prompt evaluation temperature: scalar strategies (fixed, linear, staged, TAMPO)
    decode at it, IntroLLM takes it as tau_0 and its head decides every token, EAD and EDT apply
    their per-token rules (our default: 1.0, one protocol for every run and for the base model);
    null = the strategy's own step-level plan (e.g. TAMPO's draw from pi)"""

    def __post_init__(self):
        _require(self.every >= 0, "eval.every", self.every, "must be >= 0", "set eval.every=10")
        _require(self.samples >= 1, "eval.samples", self.samples, "must be >= 1",
                 "set e.g. eval.samples=8")
        _require(self.temperature_mode in ("sample", "mean", "greedy"), "eval.temperature_mode",
                 self.temperature_mode, "must be sample, mean or greedy",
                 "set e.g. eval.temperature_mode=sample")
        _require(self.temperature is None or self.temperature > 0, "eval.temperature",
                 self.temperature, "must be > 0 or null", "set e.g. eval.temperature=1.0")


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "offline"
    """offline (no login, no network) | online | disabled"""
    project: str = "tempo-rl"
    entity: Optional[str] = None
    name: Optional[str] = None

    def __post_init__(self):
        _require(self.mode in ("offline", "online", "disabled"), "wandb.mode", self.mode,
                 "must be offline, online or disabled", "set e.g. wandb.mode=offline")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig
    learner: LearnerConfig
    meta: MetaConfig
    reward: RewardConfig
    cluster: ClusterConfig
    trainer: TrainerConfig
    eval: EvalConfig
    wandb: WandbConfig
    seed: int = 0
    experiment: str = "default"
    """the experiment's name (set by +experiment=NAME), used in the run folder's name"""


_GROUPS = {
    "model": ModelConfig, "data": DataConfig, "rollout": RolloutConfig, "learner": LearnerConfig,
    "reward": RewardConfig, "cluster": ClusterConfig, "trainer": TrainerConfig,
    "eval": EvalConfig, "wandb": WandbConfig,
}
_SCALARS = {"seed": int, "experiment": str}

# Arguments the system fills in itself (strategy_kwargs), never written in the meta config.
_DERIVED_META_ARGS = {"hidden_size", "total_steps"}


# ----------------------------------------------------------------------------- validation


def _typed(schema, key: str, node) -> Any:
    """Instantiate ``schema`` from a config node; unknown keys and bad types -> ConfigError."""
    raw = node if isinstance(node, dict) else OmegaConf.to_container(node, resolve=True)
    if not isinstance(raw, dict):
        raise ConfigError(f"{key} ({raw!r}) must be a mapping of settings; "
                          f"choose a group option, e.g. {key}=default")
    known = {f.name: f for f in dataclasses.fields(schema)}
    for name in raw:
        if name not in known:
            raise ConfigError(
                f"{key}.{name} ({raw[name]!r}) is not a setting of {key}; known keys: "
                f"{', '.join(sorted(known))}. Check the spelling (Hydra accepts any +key=value)")
    try:
        structured = OmegaConf.merge(OmegaConf.structured(schema), raw)
        return OmegaConf.to_object(structured)
    except OmegaConfBaseException as e:
        full = getattr(e, "full_key", None) or ""
        raise ConfigError(f"{key}.{full}: {e.msg if hasattr(e, 'msg') else e}; "
                          f"fix the value's type (see conf/{key}/)") from None


def _strategy_class(name: str):
    import meta

    registry = getattr(meta, "STRATEGIES")
    if name not in registry:
        raise ConfigError(f"meta.name ({name!r}) is not a known strategy; choose one of "
                          f"{sorted(registry)} (e.g. meta=introllm)")
    return registry[name]


def _meta(node) -> MetaConfig:
    raw = dict(OmegaConf.to_container(node, resolve=True)) if not isinstance(node, dict) else dict(node)
    name = raw.pop("name", None)
    if name is None:
        raise ConfigError("meta.name (missing) is required; choose a strategy, e.g. meta=fixed")
    cls = _strategy_class(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = {p for p in params if p != "self"} - _DERIVED_META_ARGS
    phi_keys = {f.name for f in dataclasses.fields(PhiTrainingConfig)} if name == "introllm" else set()
    args, phi = {}, {}
    for key, value in raw.items():
        if key in phi_keys:
            phi[key] = value
        elif key in accepted:
            args[key] = tuple(value) if isinstance(value, list) else value
        else:
            raise ConfigError(
                f"meta.{key} ({value!r}) is not a setting of meta={name}; known keys: "
                f"{', '.join(sorted(accepted | phi_keys | {'name'}))}. Check the spelling")
    phi_cfg = _typed(PhiTrainingConfig, "meta", phi) if name == "introllm" else None
    return MetaConfig(name=name, args=args, phi=phi_cfg)


def validate(cfg: DictConfig | dict) -> RunConfig:
    """The composed config as a frozen, checked ``RunConfig``; raises ``ConfigError``."""
    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    container = {k: v for k, v in container.items() if k != "hydra"}
    known = set(_GROUPS) | set(_SCALARS) | {"meta"}
    for key in container:
        if key not in known:
            raise ConfigError(f"{key} ({container[key]!r}) is not a top-level setting; known: "
                              f"{', '.join(sorted(known))}. Check the spelling of +{key}=...")
    kwargs: dict[str, Any] = {k: _typed(s, k, container.get(k) or {}) for k, s in _GROUPS.items()}
    kwargs["meta"] = _meta(container.get("meta") or {})
    for key, typ in _SCALARS.items():
        if key in container:
            value = container[key]
            _require(isinstance(value, typ), key, value, f"must be a {typ.__name__}",
                     f"set e.g. {key}={RunConfig.__dataclass_fields__[key].default}")
            kwargs[key] = value
    run = RunConfig(**kwargs)
    _cross_checks(run)
    return run


def _cross_checks(run: RunConfig) -> None:
    """Rules that span groups; the strategy is also built once so its own checks run now."""
    try:
        build_strategy(run, hidden_size=8)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"meta ({run.meta.name}): {e}") from None
    b = run.trainer.prompts_per_step * run.rollout.group_size
    _require(b % run.learner.num_ranks == 0, "trainer.prompts_per_step x rollout.group_size", b,
             f"must be divisible by learner.num_ranks ({run.learner.num_ranks})",
             "change trainer.prompts_per_step or learner.num_ranks")
    _require(run.rollout.max_prompt_tokens + run.rollout.max_new_tokens <= 32768,
             "rollout.max_prompt_tokens + rollout.max_new_tokens",
             run.rollout.max_prompt_tokens + run.rollout.max_new_tokens, "must be <= 32768",
             "lower rollout.max_new_tokens")


def strategy_kwargs(run: RunConfig, hidden_size: int) -> dict:
    """The strategy's constructor arguments: the config's plus the derived ones."""
    params = inspect.signature(_strategy_class(run.meta.name).__init__).parameters
    derived = {"hidden_size": hidden_size, "total_steps": run.trainer.total_steps}
    return {**{k: v for k, v in derived.items() if k in params}, **run.meta.args}


def build_strategy(run: RunConfig, hidden_size: int):
    """The configured temperature strategy (``meta/``), for a model of ``hidden_size``."""
    import meta

    return meta.build_strategy(run.meta.name, **strategy_kwargs(run, hidden_size))
