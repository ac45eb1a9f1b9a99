"""Hydra composition of every experiment and group option, and the start-up validation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch import config
from launch.config import ConfigError, RunConfig, build_strategy, strategy_kwargs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_run(*overrides: str) -> RunConfig:
    return config.compose_run(overrides)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_validates(experiment):
    run = compose_run(f"+experiment={experiment}")
    assert run.experiment == experiment
    expected_meta = "introllm" if experiment == "smoke" else experiment
    assert run.meta.name == expected_meta
    strategy = build_strategy(run, hidden_size=16)
    assert strategy.name == expected_meta


def test_required_experiments_exist():
    required = {"introllm", "tampo", "fixed", "linear", "ead", "edt", "smoke"}
    assert required <= set(options("experiment"))


@pytest.mark.parametrize("group", ["model", "data", "rollout", "learner", "meta", "reward",
                                   "cluster"])
def test_every_group_option_validates(group, tmp_path):
    for option in options(group):
        extra = []
        if group == "model" and option == "local":
            extra = [f"model.path={tmp_path}"]  # any value: resolution is checked at run time
        if group == "data" and option != "synthetic":
            extra = [f"data.train_path={tmp_path / 'train.jsonl'}"]
        run = compose_run(f"{group}={option}", *extra)
        assert isinstance(run, RunConfig)


def test_command_line_beats_experiment():
    run = compose_run("+experiment=introllm", "meta=tampo", "learner.lr=1e-6")
    assert run.meta.name == "tampo" and run.learner.lr == 1e-6
    assert run.meta.args["top_p"] == 0.7


def test_meta_args_reach_the_strategy():
    run = compose_run("+experiment=introllm", "meta.tau_min=0.3", "meta.lr=3e-4")
    strategy = build_strategy(run, hidden_size=32)
    assert strategy.tau_min == 0.3
    assert run.meta.phi.lr == 3e-4  # phi-training settings are not strategy arguments
    assert strategy_kwargs(run, 32)["hidden_size"] == 32


def test_linear_schedule_gets_total_steps_from_trainer():
    run = compose_run("+experiment=linear", "trainer.total_steps=11")
    s = build_strategy(run, hidden_size=8)
    assert s.temperature_at(10) == pytest.approx(1.5) and s.temperature_at(0) == pytest.approx(0.9)


@pytest.mark.parametrize("overrides, needles", [
    (["+experiment=introllm", "meta.tau_min=2", "meta.tau_max=1"], ["tau_min", "2", "tau_max"]),
    (["learner.lr=-1"], ["learner.lr", "-1", "> 0", "learner.lr="]),
    (["+learner.lrr=1e-3"], ["learner.lrr", "not a setting", "lr"]),
    (["+trainer.total_step=3"], ["trainer.total_step", "total_steps"]),
    (["+experiment=tampo", "+meta.top_pp=0.5"], ["meta.top_pp", "top_p"]),
    (["+experiment=tampo", "meta.top_p=1.5"], ["top_p", "1.5"]),
    (["learner.loss_agg=mean"], ["learner.loss_agg", "mean", "token-mean"]),
    (["rollout.top_p=0.9"], ["top_p", "invariant"]),
    (["+foo=1"], ["foo", "not a top-level setting"]),
    (["learner.clip_low=abc"], ["learner.clip_low"]),
    (["data.levels=[1,7]"], ["data.levels", "7"]),
    (["meta.name=nope"], ["meta.name", "nope", "introllm"]),
    (["+experiment=fixed", "meta.temperature=0"], ["temperature", "0"]),
    (["trainer.prompts_per_step=3", "rollout.group_size=3", "learner.num_ranks=2"],
     ["divisible", "num_ranks"]),
    (["learner.kl_coef=0.1"], ["learner.skip_zero_adv", "kl_coef", "skip_zero_adv=false"]),
    (["learner.clip_ratio_c=1.0"], ["learner.clip_ratio_c", "1.0", "> 1 or null", "3.0"]),
    (["trainer.off_policy_steps=2"], ["trainer.off_policy_steps", "2", "0 or 1", "=1"]),
    (["trainer.off_policy_steps=1", "cluster.colocate=true", "cluster.placement=pack"],
     ["trainer.off_policy_steps", "colocate", "cannot overlap", "cluster.colocate=false"]),
    (["trainer.off_policy_steps=1", "learner.tis_cap=null"],
     ["trainer.off_policy_steps", "learner.tis_cap", "importance weight", "tis_cap=2.0"]),
])
def test_bad_values_fail_with_key_value_rule_and_fix(overrides, needles):
    with pytest.raises(ConfigError) as err:
        compose_run(*overrides)
    message = str(err.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_config_defaults_match_strategy_constructor_defaults():
    """The YAML values and the constructors' defaults are two copies: they must not drift."""
    import inspect

    import meta

    for name in options("meta"):
        run = compose_run(f"meta={name}")
        params = inspect.signature(meta.STRATEGIES[name].__init__).parameters
        for key, value in run.meta.args.items():
            default = params[key].default
            if default is inspect.Parameter.empty:
                continue
            if isinstance(default, tuple):
                value, default = tuple(value), tuple(default)
            want = pytest.approx(default) if isinstance(default, float) else default
            assert value == want, (f"conf/meta/{name}.yaml {key}={value!r} but the constructor "
                                   f"default is {default!r}")


def test_cli_reports_config_error_before_starting(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "launch.run", "+experiment=introllm", "meta.tau_min=2",
         "meta.tau_max=1", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config error" in proc.stderr and "tau_min" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dual_clip_is_off_by_default_and_takes_a_value():
    assert compose_run().learner.clip_ratio_c is None
    assert compose_run("learner.clip_ratio_c=3.0").learner.clip_ratio_c == 3.0
