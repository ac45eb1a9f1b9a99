"""Reliability through the real entry point (issue #7).

- Exact resume: a run killed with SIGKILL after a checkpoint and resumed with
  ``trainer.resume=auto`` ends with the same parameters and per-step metrics as a run that never
  stopped (bitwise on CPU), under the same wandb run id; a checkpoint that does not fit is refused.
- Failures: killed rollout and reward actors restart and the run loses no step; a killed learner
  rank stops the run by name and it resumes; a streak of non-finite updates stops the run.
- Bad input: a model folder that is not a model is refused before anything starts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch.checkpoint import (
    CheckpointError,
    check_compatible,
    commit,
    find_checkpoint,
    load_driver_state,
    rank_dir,
    set_aside_newer,
    stage,
    truncate_metrics,
    verify,
    write_driver,
)
from launch.config import ConfigError
from learner.checkpoint import optimizer_file, read_weights, safe_load
from tests.conftest import sane_steps
from tests.test_config_on_cpu import compose_run

ROOT = Path(__file__).resolve().parents[1]

# 4 steps of 4 prompts over an 8-problem training set: the data epoch ends with step 2, where
# the run is killed, so the resumed run starts exactly at an epoch's end (where other systems
# have been seen to do zero steps) and must draw the next epoch's order
ARGS = ["+experiment=smoke", "rollout=hf", "meta=tampo", "trainer.total_steps=4",
        "trainer.save_every=1", "trainer.keep_last=4", "data.train_size=8", "eval.every=0",
        "cluster.dashboard=false"]
# measured, not reproduced: wall-clock times and what derives from them
VOLATILE = ("timing_s/", "perf/", "rollout/gen_s", "reward/wall_s")


def launch(run_dir, model_dir, *extra, rollout="hf"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    args = [a if a != "rollout=hf" else f"rollout={rollout}" for a in ARGS]
    cmd = [sys.executable, "-m", "launch.run", *args, f"model.path={model_dir}",
           f"hydra.run.dir={run_dir}", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(marker: Path, proc, timeout=600) -> None:
    """Until `marker` exists (a checkpoint's COMPLETE), while the run is alive."""
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)


def finish(proc, timeout=600):
    """The run's output once it ended with exit code 0; a run still going after `timeout` s is
    killed (its whole process group) so that no test leaves one behind."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the run did not end within {timeout} s (killed); it printed:\n{out[-5000:]}")
    assert proc.returncode == 0, out[-5000:]
    return out


def step_rows(run_dir):
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows}


def theta(run_dir, step):
    """(theta, rank 0's optimizer state) of a run's checkpoint."""
    ckpt = Path(run_dir) / "checkpoints" / f"step_{step:06d}"
    return (read_weights(ckpt / "model"),
            safe_load(rank_dir(ckpt, 0) / optimizer_file("theta")))


def wandb_ids(run_dir):
    return {p.name.rsplit("-", 1)[-1] for p in (Path(run_dir) / "wandb").glob("offline-run-*")}


@pytest.mark.slow
@pytest.mark.parametrize("off_policy, ranks", [(0, 1), (1, 2)],
                         ids=["sync-1rank", "offpolicy-2ranks-zero3"])
def test_killed_and_resumed_run_equals_the_straight_run(tmp_path, tiny_model_dir, off_policy,
                                                        ranks):
    """Killed after the step-2 checkpoint and resumed: every step's metrics, theta and the
    optimizer equal a straight run's. One step off-policy, step 3's rollout was in flight at the
    checkpoint (sampled with weights it no longer holds): it was kept whole and is trained on.
    With 2 ZeRO-3 ranks each rank restores from its own optimizer shard (theta from its fp32
    master weights), the checkpoint's model/ written by both."""
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    mode = [f"trainer.off_policy_steps={off_policy}"]
    if ranks > 1:
        mode += [f"learner.num_ranks={ranks}", "learner.zero_stage=3"]
    finish(launch(straight, tiny_model_dir, *mode))

    proc = launch(broken, tiny_model_dir, *mode)
    wait_for(broken / "checkpoints" / "step_000002" / "COMPLETE", proc)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, no clean-up
    proc.communicate(timeout=60)
    killed_at = max(int(p.name[5:]) for p in (broken / "checkpoints").glob("step_*")
                    if (p / "COMPLETE").exists())
    assert killed_at < 4, "the run finished before the kill"

    out = finish(launch(broken, tiny_model_dir, *mode, "trainer.resume=auto"))
    assert "resumed from" in out and f"at step {killed_at}" in out
    if killed_at == 2 and not off_policy:
        assert "data epoch 1, position 0" in out or "data epoch 0, position 8" in out
    elif killed_at == 2:  # step 3's prompts were drawn (its rollout in flight): the next epoch's
        assert "data epoch 1, position 4" in out

    a, b = step_rows(straight), step_rows(broken)
    assert sorted(b) == sorted(a) == [0, 1, 2, 3, 4]  # no step lost or logged twice
    assert [a[s]["rollout/staleness"] for s in (1, 2, 3, 4)] == [0] + [off_policy] * 3
    in_flight = load_driver_state(broken / "checkpoints" / f"step_{killed_at:06d}")["in_flight"]
    assert (in_flight is not None) == bool(off_policy)
    for step in a:
        assert b[step] == a[step], f"step {step} differs after resume"
    (ta, oa), (tb, ob) = theta(straight, 4), theta(broken, 4)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    ma, mb = _tensors(oa), _tensors(ob)  # the optimizer state: moments (and ZeRO's masters)
    assert len(ma) == len(mb) > 0 and all(torch.equal(x, y) for x, y in zip(ma, mb))
    assert len(wandb_ids(broken)) == 1  # the resumed run continued the same wandb run


def _tensors(obj) -> list:
    """Every tensor in a nested state, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors(x)]
    return []


def _fake_ckpt(root: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint folder written by launch.checkpoint, with a stand-in learner file."""
    tmp = stage(root, step)
    write_driver(tmp, {"step": step, "meta": {"pi": torch.ones(3)}}, {"seed": 0})
    (tmp / "model").mkdir()
    (tmp / "model" / "model-00001-of-00001.safetensors").write_bytes(bytes(range(256)) * 8)
    if not complete:  # killed while writing: left under its temporary name
        return tmp
    return commit(tmp, keep_last=10)


def test_find_checkpoint_takes_the_newest_complete_one(tmp_path):
    assert find_checkpoint(tmp_path, None) is None
    assert find_checkpoint(tmp_path, "auto") is None  # nothing yet: a fresh start
    _fake_ckpt(tmp_path, 2)
    newest = _fake_ckpt(tmp_path, 4)
    _fake_ckpt(tmp_path, 6, complete=False)  # killed while writing: ignored
    half = tmp_path / "checkpoints" / "step_000008"  # renamed, but its marker never written
    half.mkdir()
    assert find_checkpoint(tmp_path, "auto") == newest
    assert find_checkpoint(tmp_path, str(tmp_path)) == newest
    assert find_checkpoint(tmp_path, str(newest)) == newest
    with pytest.raises(ConfigError, match="trainer.resume .* neither a complete checkpoint"):
        find_checkpoint(tmp_path, str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"eval.checkpoint .* neither .*save_every=0 writes none"):
        find_checkpoint(tmp_path, str(tmp_path / "nope"), "eval.checkpoint")  # launch.evaluate's


def test_a_resume_with_another_number_of_ranks_says_to_start_from_its_weights(tmp_path):
    from dataclasses import asdict

    saved = json.loads(json.dumps(asdict(compose_run("learner.num_ranks=2",
                                                     "learner.zero_stage=3"))))
    with pytest.raises(ConfigError, match=r"learner.num_ranks: checkpoint 2, now 1.*model.path="
                                          rf"{tmp_path}/model.*sharded over 2 ranks"):
        check_compatible(saved, compose_run(), tmp_path)


def test_a_checkpoint_from_another_config_is_refused_by_name():
    from dataclasses import asdict

    saved = json.loads(json.dumps(asdict(compose_run("+experiment=fixed"))))  # as config.json
    check_compatible(saved, compose_run("+experiment=fixed", "trainer.total_steps=500",
                                        "eval.every=3"), Path("ck"))  # may change
    with pytest.raises(ConfigError) as err:
        check_compatible(saved, compose_run("+experiment=fixed", "learner.lr=0.5"), Path("ck"))
    assert "learner.lr: checkpoint 0.0001, now 0.5" in str(err.value)
    assert "trainer.resume=null" in str(err.value)
    with pytest.raises(ConfigError, match="meta.name"):
        check_compatible(saved, compose_run("+experiment=tampo"), Path("ck"))


def test_truncate_metrics_drops_steps_past_the_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = "".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(5))
    path.write_text(lines + '{"step": 5, "x')  # a torn last line
    assert truncate_metrics(path, 2) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 1, 2]


# ------------------------------------------------------------------ failures that stop the run


def test_nonfinite_updates_are_counted_and_a_streak_stops_the_run(tmp_path):
    from launch.trainer import Trainer, TrainingStopped

    trainer = Trainer(compose_run("+experiment=fixed"), str(tmp_path), "unused", [], [])
    bad, good = {"actor/skipped_nonfinite": 1.0}, {"actor/skipped_nonfinite": 0.0}
    for step, m in enumerate([bad, bad, good, bad, {"phi/skipped_nonfinite": 0.5}]):
        trainer._check_nonfinite(step, m)  # never 3 in a row
    _fake_ckpt(tmp_path, 4)
    with pytest.raises(TrainingStopped) as err:
        trainer._check_nonfinite(5, bad)
    message = str(err.value)
    assert "3 steps in a row (up to step 6)" in message and "step_000004" in message
    assert "trainer.resume=auto" in message and "learner.lr" in message


def kill_actor(proc, name: str) -> None:
    """SIGKILL the one process of the run whose command line names `name` (an actor class such
    as 'LearnerWorker', or a vLLM process title such as 'VLLM::EngineCore')."""
    import psutil

    def names(p) -> str:
        try:
            return " ".join(p.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess):  # e.g. vLLM's exited helpers
            return ""

    found = [p.pid for p in psutil.Process(proc.pid).children(recursive=True) if name in names(p)]
    assert len(found) == 1, (name, found)
    os.kill(found[0], signal.SIGKILL)


@pytest.mark.slow
def test_a_dead_learner_rank_stops_the_run_by_name_and_it_resumes(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    proc = launch(run_dir, tiny_model_dir, "trainer.total_steps=16", "meta=fixed")
    wait_for(run_dir / "checkpoints" / "step_000002" / "COMPLETE", proc)
    kill_actor(proc, "LearnerWorker")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out[-3000:]
    assert "run stopped: learner rank 0 died during step" in out
    assert "the last checkpoint is" in out and "trainer.resume=auto" in out
    assert "Traceback" not in out.split("run stopped:")[-1]

    out = finish(launch(run_dir, tiny_model_dir, "trainer.total_steps=16", "meta=fixed",
                        "trainer.resume=auto"))
    assert "resumed from" in out
    steps = [s for s in step_rows(run_dir) if s > 0]
    assert steps == list(range(1, 17))  # every step exactly once across the two runs


@pytest.mark.slow
def test_killed_rollout_and_reward_actors_restart_and_no_step_is_lost(tmp_path, tiny_model_dir):
    """One step off-policy (a generation is in flight during every update), the rollout actor
    is killed after step 2 (it comes back with the model folder's weights and must be resynced
    before it generates: the weight-sync group is formed again with its new engine, and the
    rollouts it held are generated again), the reward actor after step 5."""
    run_dir = tmp_path / "run"
    proc = launch(run_dir, tiny_model_dir, "trainer.total_steps=8", "meta=fixed",
                  "trainer.off_policy_steps=1", rollout="vllm")
    wait_for(run_dir / "checkpoints" / "step_000002" / "COMPLETE", proc)
    kill_actor(proc, "RolloutWorker")
    wait_for(run_dir / "checkpoints" / "step_000005" / "COMPLETE", proc)
    kill_actor(proc, "RewardWorker")  # stateless: Ray restarts it and retries its task
    out = finish(proc, timeout=300)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = sane_steps(rows, steps=8, max_new_tokens=32)  # each step once; engine == learner
    assert all(r["reward/num_items"] == 16 for r in steps)  # 4 prompts x 4, none lost or doubled
    assert steps[-1]["rollout/actor_restarts"] == 1, out[-3000:]
    state = json.loads((rank_dir(run_dir / "checkpoints" / "step_000008", 0)
                        / "state.json").read_text())
    assert state["updates"]["theta"] == 8  # one update per step: no step was trained twice


@pytest.mark.slow
@pytest.mark.parametrize("shape, victim", [
    ("rollout.engine_core=process", "VLLM::EngineCore"),
    ("rollout.tensor_parallel_size=2", "VLLM::Worker_TP1"),
], ids=["engine-core", "tp-worker"])
def test_a_killed_vllm_process_restarts_the_rollout_actor_and_no_step_is_lost(
        tmp_path, tiny_model_dir, shape, victim):
    """One of the vLLM engine's own processes is killed after step 2: the rollout actor sees its
    engine dead, exits, is restarted by Ray with a fresh engine, resynced, and the step repeats."""
    run_dir = tmp_path / "run"
    proc = launch(run_dir, tiny_model_dir, "trainer.total_steps=5", "meta=introllm", shape,
                  rollout="vllm")
    wait_for(run_dir / "checkpoints" / "step_000002" / "COMPLETE", proc)
    kill_actor(proc, victim)
    out = finish(proc, timeout=300)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = sane_steps(rows, steps=5, max_new_tokens=32)  # each step once; engine == learner
    assert all(r["reward/num_items"] == 16 for r in steps)  # 4 prompts x 4, none lost or doubled
    assert steps[-1]["rollout/actor_restarts"] == 1, out[-3000:]
    state = json.loads((rank_dir(run_dir / "checkpoints" / "step_000005", 0)
                        / "state.json").read_text())
    # one update per step, of the step's phase: no step was trained twice
    assert state["updates"] == {"theta": sum("actor/pg_loss" in r for r in steps),
                                "phi": sum("phi/pg_loss" in r for r in steps)}
    assert sum(state["updates"].values()) >= 5


@pytest.mark.parametrize("make, needle", [
    (lambda d: None, "is not a folder"),
    (lambda d: d.mkdir(), "has no config.json"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}")), "has no weights"),
])
def test_a_model_folder_that_is_not_a_model_is_refused_before_anything_starts(tmp_path, make,
                                                                              needle):
    from launch.pipeline import resolve_model_path

    folder = tmp_path / "model"
    make(folder)
    with pytest.raises(ConfigError, match=needle) as err:
        resolve_model_path(compose_run("model=local", f"model.path={folder}"))
    assert "model.path" in str(err.value)


def test_triton_log_probs_on_cpu_learners_are_refused_before_anything_starts():
    from launch.pipeline import check_learner_device

    with pytest.raises(ConfigError, match="learner.logprob_impl=auto") as err:
        check_learner_device(compose_run("learner.logprob_impl=triton", "cluster.device=cpu"))
    assert "learner.logprob_impl (triton)" in str(err.value)
    check_learner_device(compose_run("learner.logprob_impl=auto", "cluster.device=cpu"))  # fine


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    previous = _fake_ckpt(tmp_path, 2)
    newest = _fake_ckpt(tmp_path, 4)
    f = newest / "model" / "model-00001-of-00001.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="launch.checkpoint"):
        assert find_checkpoint(tmp_path, "auto") == previous
    assert str(f) in caplog.text and "1000 bytes" in caplog.text
    assert f"falling back to {previous}" in caplog.text
    with pytest.raises(CheckpointError, match=f"{f} has 1000 bytes.*trainer.resume={previous}"):
        find_checkpoint(tmp_path, str(newest))  # named explicitly: refused, with the way out


def test_an_altered_or_missing_file_is_refused_by_name(tmp_path):
    ckpt = _fake_ckpt(tmp_path, 2)
    f = ckpt / "model" / "model-00001-of-00001.safetensors"
    data = bytearray(f.read_bytes())
    data[100] ^= 1  # same size, one bit flipped
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{f} differs .*checksum.*trainer.resume=null"):
        find_checkpoint(tmp_path, str(ckpt))
    with pytest.raises(CheckpointError, match="no checkpoint of .* verifies"):
        find_checkpoint(tmp_path, "auto")  # nothing to fall back to: not a silent fresh start
    (ckpt / "driver.pt").unlink()
    with pytest.raises(CheckpointError, match="driver.pt is missing"):
        verify(ckpt)


def test_driver_state_loads_without_pickles(tmp_path):
    ckpt = _fake_ckpt(tmp_path, 2)
    state = load_driver_state(ckpt)
    assert state["step"] == 2 and torch.equal(state["meta"]["pi"], torch.ones(3))
    assert state["config"] == {"seed": 0}
    torch.save({"obj": Path("x")}, ckpt / "driver.pt")  # an arbitrary object: never unpickled
    with pytest.raises(ValueError, match="driver.pt does not load as tensors and plain data"):
        load_driver_state(ckpt)


def test_resuming_before_newer_checkpoints_sets_them_aside_and_keep_last_keeps_the_new_one(
        tmp_path):
    """Resumed from step 2 with steps 4 and 6 of an abandoned trajectory in the folder: they are
    renamed away (not deleted), and the run's next checkpoints are never pruned in their favour."""
    resumed = _fake_ckpt(tmp_path, 2)
    _fake_ckpt(tmp_path, 4)
    _fake_ckpt(tmp_path, 6)
    moved = set_aside_newer(tmp_path, resumed)
    assert [p.name for p in moved] == [".abandoned_step_000004", ".abandoned_step_000006"]
    assert all((p / "COMPLETE").exists() for p in moved)  # kept whole
    assert find_checkpoint(tmp_path, "auto") == resumed
    tmp = stage(tmp_path, 3)
    write_driver(tmp, {"step": 3}, {})
    third = commit(tmp, keep_last=1)
    assert [p.name for p in (tmp_path / "checkpoints").glob("step_*")] == [third.name]
    (tmp_path / "checkpoints" / "step_000005").mkdir()  # a step whose folder exists already
    _fake_ckpt(tmp_path, 5)
    assert (tmp_path / "checkpoints" / ".abandoned_step_000005").is_dir()  # kept, set aside
    assert find_checkpoint(tmp_path, "auto").name == "step_000005"
