"""End to end: `python -m launch.run +experiment=smoke` on real Ray, DeepSpeed, Hydra and wandb
(offline), on a tiny model built for the test; checks the run folder and its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import sane_steps

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run_smoke(tmp_path, model_dir, *overrides, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "RAY_DEDUP_LOGS": "0"}
    cmd = [sys.executable, "-m", "launch.run", "+experiment=smoke", f"model.path={model_dir}",
           f"hydra.run.dir={tmp_path}", "cluster.dashboard=false", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return proc, rows


def check_sane_run(run_dir, rows, overrides, steps: int = 2) -> None:
    """What every smoke run must leave behind: sane per-step metrics, both evaluations,
    checkpoints, τ dumps, the config, the report, the wandb run (unless disabled) and the final
    model."""
    steps = sane_steps(rows, steps=steps, max_new_tokens=32)
    for r in steps:
        assert r["timing_s/step"] > 0 and r["perf/throughput"] > 0
    if "meta=tampo" not in overrides:  # introllm: phi first, then theta (alternating)
        assert "phi/pg_loss" in steps[0] and "actor/pg_loss" in steps[1]
        assert 0.5 <= steps[0]["tau/min"] and steps[0]["tau/max"] <= 1.5
    else:
        assert any(k.startswith("tampo/pi_T") for k in steps[0])
    assert any("eval/all/avg@2" in r for r in rows)
    assert any("eval_base/all/avg@2" in r for r in rows)
    ckpts = list((run_dir / "checkpoints").glob("step_*"))
    assert ckpts and all((c / "COMPLETE").exists() for c in ckpts)
    dumps = sorted((run_dir / "rollouts").glob("step_*.jsonl"))
    assert dumps
    first = json.loads(dumps[0].read_text().splitlines()[0])
    assert len(first["tau"]) == len(first["token_ids"]) == len(first["tokens"])
    assert (run_dir / "resolved_config.yaml").exists()
    report = (run_dir / "report.md").read_text()  # the analyses ran at the end
    assert "## Held-out evaluation" in report and (run_dir / "plots" / "curves.png").exists()
    if "wandb.mode=disabled" not in overrides:
        assert list((run_dir / "wandb").glob("offline-run-*"))
    assert (run_dir / "final_model" / "temperature_policy.json").exists()


# IntroLLM on the vLLM engine runs end to end in test_pinned_run.py (the same checks, 2 ZeRO-3
# ranks); the engine-core-process and tensor-parallel shapes in test_reliability.py (5 steps, the
# same per-step checks, with one of their vLLM processes killed midway); the transformers
# engine's run is `hf_run`, shared by the tests below
def test_tampo_smoke_run_on_vllm_trains_and_writes_sane_metrics(tmp_path, tiny_model_dir):
    proc, rows = run_smoke(tmp_path, tiny_model_dir, "meta=tampo")
    check_sane_run(tmp_path, rows, ["meta=tampo"])


HF_RUN = ("rollout=hf", "trainer.save_every=1", "learner.skip_zero_adv=false")


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, tiny_model_dir):
    """One smoke run on the transformers engine (a checkpoint after every step, every row to the
    learner), read by the tests below: (run folder, metric rows)."""
    run_dir = tmp_path_factory.mktemp("hf-run") / "run"
    _, rows = run_smoke(run_dir, tiny_model_dir, *HF_RUN)
    return run_dir, rows


def test_smoke_run_on_the_transformers_engine_writes_sane_metrics(hf_run):
    check_sane_run(*hf_run, list(HF_RUN))


def test_tau_entropy_scatter_recomputes_the_learners_entropies(hf_run):
    """The analysis's per-token entropies (checkpoint step_1's theta on dump step_1's tokens)
    are the ones the learner computed in its old pass of that step: same token mean, same
    correlation with tau (all rows reach the learner with skip_zero_adv=false)."""
    from launch.analyze import entropy_pairs, pearson

    run_dir, rows = hf_run
    step, pairs = entropy_pairs(run_dir)
    dump = (run_dir / "rollouts" / "step_000001.jsonl").read_text().splitlines()
    assert step == 1 and len(pairs) == sum(len(json.loads(x)["tau"]) for x in dump)
    learner = next(r for r in rows if r["step"] == 2)  # step index 1 is logged as step 2 (theta)
    mean = sum(e for e, _ in pairs) / len(pairs)
    assert abs(mean - learner["actor/entropy_untempered"]) < 1e-4
    assert abs(pearson(pairs) - learner["tau/entropy_corr"]) < 1e-4
    assert (run_dir / "plots" / "tau_entropy_scatter.png").exists()
    assert "](plots/tau_entropy_scatter.png)" in (run_dir / "report.md").read_text()


def test_evaluate_a_checkpoint_reproduces_the_runs_final_evaluation(tmp_path, tiny_model_dir,
                                                                    hf_run):
    """launch.evaluate on the last checkpoint, same seeds: exactly the run's own final numbers
    (so the checkpoint holds theta and phi, and the entry point decodes like the trainer)."""
    run_dir, rows = hf_run
    final = next(r for r in reversed(rows) if "eval/all/avg@2" in r)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "launch.evaluate", "+experiment=smoke", "rollout=hf",
           f"model.path={tiny_model_dir}", f"eval.checkpoint={run_dir}",
           f"hydra.run.dir={tmp_path / 'eval'}", "cluster.dashboard=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert got["checkpoint"].endswith("step_000002") and got["problems"] == 20
    for key in ("eval/all/avg@2", "eval/all/pass@2", "eval/L1/avg@2"):
        assert got[key] == final[key], key
    assert "held-out evaluation of" in proc.stdout

    # the same checkpoint exported: transformers loads theta, the evaluation is the same again
    out = tmp_path / "exported"
    proc = subprocess.run([sys.executable, "-m", "launch.export", str(run_dir), "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    policy = json.loads((out / "temperature_policy.json").read_text())
    assert policy["strategy"]["name"] == "introllm" and policy["learns_head"]
    assert policy["trained_steps"] == 2 and policy["summary"]["tau_max"] == 1.5
    assert (out / "temperature_head.safetensors").exists()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from learner.checkpoint import read_weights

    model = AutoModelForCausalLM.from_pretrained(out)  # the head's file is not read
    ckpt_theta = read_weights(run_dir / "checkpoints" / "step_000002" / "model")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt_theta.items()
               if not k.startswith("temperature_head."))
    assert torch.equal(load_file(str(out / "temperature_head.safetensors"))[
        "temperature_head.fc2.bias"], ckpt_theta["temperature_head.fc2.bias"])
    final_model = read_weights(run_dir / "final_model")  # the run's own export
    assert final_model.keys() == ckpt_theta.keys()
    assert all(torch.equal(final_model[k], v) for k, v in ckpt_theta.items())
    # the checkpoint's model/ is itself a model folder transformers loads
    assert all(torch.equal(v, AutoModelForCausalLM.from_pretrained(
        run_dir / "checkpoints" / "step_000002" / "model").state_dict()[k])
        for k, v in state.items())
    cmd = [c for c in cmd if not c.startswith(("model.path=", "eval.checkpoint=", "hydra."))]
    cmd += [f"model.path={out}", f"hydra.run.dir={tmp_path / 'eval_exported'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exported = json.loads((tmp_path / "eval_exported" / "eval_results.json").read_text())
    for key in ("eval/all/avg@2", "eval/all/pass@2", "eval/L1/avg@2"):
        assert exported[key] == final[key], key  # theta and the head both came with the folder
