"""Typed run configuration: Hydra composes YAML from ``conf/``, this module validates it.

``validate(cfg)`` turns the composed ``DictConfig`` into a frozen ``RunConfig`` before anything
starts. Every group has a dataclass schema (the rollout and learner groups' live next to the
package they configure, ``rollout/config.py`` and ``learner/config.py``, re-exported here);
unknown keys (a ``+key=value`` typo, which Hydra accepts silently), wrong types and out-of-range
values raise ``ConfigError`` with the key, the value, the rule and a fix. The ``meta`` group is
checked against the strategy's own constructor (``meta/``), so a strategy's arguments and their
range checks live in one place.

Values the system derives (the model's hidden size for IntroLLM's head, the number of steps for
the linear schedule) are filled in by ``strategy_kwargs``, not written in YAML.

This module is the pure schema: it reads no files. The settings that depend on the model
(tensor-parallel size vs the heads, head size, context, dtype on this device, chat template, EOS,
architecture) are checked against the model folder by ``launch.model_checks``, once the model is
resolved (``launch.inputs.resolve_model_path``), still before anything starts.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

# ConfigError (launch.checks, a leaf) and the rollout / learner schemas (next to the packages
# they configure, which never import this module) are re-exported: `from launch.config import`
from launch.checks import ConfigError
from launch.checks import require as _require
from learner.config import LearnerConfig, PhiTrainingConfig
from rollout.config import RolloutConfig

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
    val_path: Optional[str] = None
    """validation problems (local file) for eval.temperatures: launch.compare tunes each arm's
    decoding temperature on them, never on eval_path's; must not share problems with eval_path"""
    format: str = "auto"
    """row schema of local files: auto | math | gsm8k | answer (problem + answer)"""
    train_size: int = 20000
    """synthetic: number of training problems generated"""
    eval_size: int = 500
    """synthetic: held-out problems (spread evenly over families x levels: 100 per level with the
    default countdown only)"""
    val_size: int = 0
    """synthetic: validation problems, from a split disjoint from train and held-out (by a hash
    of the prompt); used by eval.temperatures (launch.compare tunes decoding on them); 0 = none"""
    families: tuple[str, ...] = ("countdown",)
    """synthetic task families RL trains and evaluates on (the model is pre-trained on all):
    countdown only by default, where RL teaches (README, "Training results"); arith, countdown"""
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
        _require(self.val_size >= 0, "data.val_size", self.val_size, "must be >= 0",
                 "set e.g. data.val_size=250")
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
class MetaConfig:
    """The temperature strategy: ``name`` plus the strategy's constructor arguments."""

    name: str = "fixed"
    args: dict = field(default_factory=dict)
    """the strategy's own constructor arguments (validated by the constructor)"""
    phi: Optional[PhiTrainingConfig] = None
    """phi-phase training settings; set exactly when the strategy learns a head
    (``TemperatureStrategy.learns_head``: IntroLLM)"""


@dataclass(frozen=True)
class RewardConfig:
    num_workers: int = 2
    """CPU worker processes scoring answers; 0 = in-process (no hard time limit)"""
    timeout_s: float = 5.0
    """per-answer time limit; a time-out scores 0 and is counted"""
    format_weight: float = 0.0
    """weight of the optional format reward (has a \\boxed{}); reward stays in [0, 1]"""
    random_control: bool = False
    """the random-reward control: the learner gets coin flips with the batch's verifier mean
    instead of the verifier's rewards (critic/score/* and every evaluation stay the verifier's)"""

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
                 self.placement_timeout_s, "must be > 0",
                 "set e.g. cluster.placement_timeout_s=300")
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
    off_policy_steps: int = 0
    """0 = synchronous: generate step t with the weights after update t - 1, then train on it |
    1 = one step off-policy: step t + 1's rollout is generated (with the weights before update t)
    while the learners train on step t"""
    resume: Optional[str] = None
    """null = start fresh | auto = the newest complete checkpoint under this run folder's
    checkpoints/ (fresh when there is none; pin the folder with hydra.run.dir=...) | a path to a
    checkpoint folder (step_NNNNNN) or to a run folder"""

    def __post_init__(self):
        for key in ("total_steps", "prompts_per_step", "keep_last", "max_nonfinite_steps"):
            value = getattr(self, key)
            _require(value >= 1, f"trainer.{key}", value, "must be >= 1",
                     f"set e.g. trainer.{key}={getattr(TrainerConfig, key)}")
        _require(self.off_policy_steps in (0, 1), "trainer.off_policy_steps",
                 self.off_policy_steps, "must be 0 or 1 (one engine pool runs one generation at "
                 "a time: 1 already overlaps a whole generation with a whole update, more would "
                 "only add staleness)", "set trainer.off_policy_steps=1 (or 0)")
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
    greedy: bool = True
    """also evaluate greedily (one argmax response per problem, tau = 1) before training and at
    the end: keys eval_base_greedy/ and eval_greedy/ (the greedy accuracy is avg@1)"""
    checkpoint: Optional[str] = None
    """launch.evaluate only: a checkpoint folder (step_NNNNNN) or run folder whose newest
    checkpoint's theta and phi are evaluated; null = the model folder (model.path) as it is"""
    temperature: Optional[float] = 1.0
    """the per-prompt evaluation temperature: scalar strategies (fixed, linear, staged, TAMPO)
    decode at it, IntroLLM takes it as tau_0 and its head decides every token, EAD and EDT apply
    their per-token rules (our default: 1.0, one protocol for every run and for the base model);
    null = the strategy's own step-level plan (e.g. TAMPO's draw from pi)"""
    temperatures: tuple[float, ...] = ()
    """after the last step (and in launch.evaluate), also decode the held-out and validation
    problems at each of these temperatures, every token at that one temperature whatever the
    strategy, and under the strategy's own policy ("own": its plan and per-token rule): keys
    sweep/<test|val>/<t0.6|own>/..., records evals/step_NNNNNN_<split>_<decoding>.jsonl
    (launch.compare pairs arms at matched temperatures and tunes each on validation); () = none"""

    def __post_init__(self):
        _require(self.every >= 0, "eval.every", self.every, "must be >= 0", "set eval.every=10")
        _require(self.samples >= 1, "eval.samples", self.samples, "must be >= 1",
                 "set e.g. eval.samples=8")
        _require(self.temperature_mode in ("sample", "mean", "greedy"), "eval.temperature_mode",
                 self.temperature_mode, "must be sample, mean or greedy",
                 "set e.g. eval.temperature_mode=sample")
        _require(self.temperature is None or self.temperature > 0, "eval.temperature",
                 self.temperature, "must be > 0 or null", "set e.g. eval.temperature=1.0")
        _require(all(t > 0 for t in self.temperatures)
                 and len(set(self.temperatures)) == len(self.temperatures), "eval.temperatures",
                 list(self.temperatures), "must be distinct temperatures > 0",
                 "set e.g. eval.temperatures=[0.6,0.8,1.0]")


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

    registry = meta.STRATEGIES
    if name not in registry:
        raise ConfigError(f"meta.name ({name!r}) is not a known strategy; choose one of "
                          f"{sorted(registry)} (e.g. meta=introllm)")
    return registry[name]


def _meta(node) -> MetaConfig:
    raw = dict(node if isinstance(node, dict) else OmegaConf.to_container(node, resolve=True))
    name = raw.pop("name", None)
    if name is None:
        raise ConfigError("meta.name (missing) is required; choose a strategy, e.g. meta=fixed")
    cls = _strategy_class(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = {p for p in params if p != "self"} - _DERIVED_META_ARGS
    phi_keys = ({f.name for f in dataclasses.fields(PhiTrainingConfig)} if cls.learns_head
                else set())
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
    phi_cfg = _typed(PhiTrainingConfig, "meta", phi) if cls.learns_head else None
    return MetaConfig(name=name, args=args, phi=phi_cfg)


def compose_run(overrides=()) -> "RunConfig":
    """A validated RunConfig from the repository's conf/ and Hydra ``overrides``, as
    ``launch.run`` composes it."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return validate(cfg)


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
    if run.trainer.off_policy_steps:
        _require(not run.cluster.colocate, "trainer.off_policy_steps", run.trainer.off_policy_steps,
                 "needs separate devices for the engines and the learners (with "
                 "cluster.colocate=true they share one, so generation and update cannot overlap)",
                 "set trainer.off_policy_steps=0, or cluster.colocate=false")
        _require(run.learner.tis_cap is not None, "trainer.off_policy_steps",
                 run.trainer.off_policy_steps,
                 "needs learner.tis_cap: the importance weight between the learner's policy and "
                 "the older one that sampled the batch (null turns it off)",
                 "set learner.tis_cap=2.0, or trainer.off_policy_steps=0")
    _require(run.rollout.weight_sync != "collective" or not run.cluster.colocate,
             "rollout.weight_sync", run.rollout.weight_sync,
             "cannot run with cluster.colocate=true: engine i and learner rank i share a device, "
             "which NCCL cannot connect (vLLM's CUDA IPC transfer would; it is not wired here)",
             "set rollout.weight_sync=auto (the object store when colocated)")
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
