"""Placement and data movement across Ray actors.

* ``plan_layout`` and the cluster settings: pure, fast.
* A two-node Ray cluster on this one machine (``ray.cluster_utils.Cluster``: a head and a second
  node, each its own raylet and object store) runs the smoke experiment with
  ``cluster.placement=spread``, 2 rollout engines and 2 learner ranks (gloo between "nodes"); Ray's
  GCS actor table must show engines and ranks on both nodes, the ranks must end with the same
  parameters, and the metrics must be sane.
* ``Trainer.step`` in-process: the driver only ever receives refs and small metric dicts, never a
  ``TrajectoryBatch`` (a spy on ``ray.get`` plus a hook on unpickling batches in the driver).

The two-node cluster writes its address file and sockets under its own RAY_TMPDIR, so a plain
``ray.init()`` elsewhere on the machine never joins it; teardown stops only its own processes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from launch.config import ClusterConfig, ConfigError
from launch.placement import plan_layout
from learner.checkpoint import read_weights
from tests.conftest import sane_steps

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


# ----------------------------------------------------------------------------- fast: the layout


def test_separate_pools_give_one_bundle_per_actor():
    lay = plan_layout(num_rollout=2, num_ranks=3, colocate=False, gpu=True)
    assert lay.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 5
    assert [s.bundle for s in lay.rollout] == [0, 1]
    assert [s.bundle for s in lay.learner] == [2, 3, 4]
    assert all(s.resources == {"num_cpus": 1.0, "num_gpus": 1.0} for s in lay.rollout + lay.learner)
    cpu = plan_layout(2, 2, colocate=False, gpu=False)  # the CPU path: {"CPU": 1} bundles
    assert cpu.bundles == [{"CPU": 1.0}] * 4
    assert all(s.resources == {"num_cpus": 1.0} for s in cpu.rollout + cpu.learner)


def test_colocation_shares_bundle_i_between_engine_i_and_rank_i():
    lay = plan_layout(num_rollout=2, num_ranks=1, colocate=True, gpu=True)
    # bundle 0: engine 0 + rank 0 (half a GPU, one CPU each); bundle 1: engine 1 alone
    assert lay.bundles == [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0}]
    assert lay.rollout[0].bundle == lay.learner[0].bundle == 0
    half = {"num_cpus": 1.0, "num_gpus": 0.5}
    assert lay.rollout[0].resources == lay.learner[0].resources == half
    assert lay.rollout[1].resources == {"num_cpus": 1.0, "num_gpus": 1.0}
    cpu = plan_layout(2, 2, colocate=True, gpu=False)
    assert cpu.bundles == [{"CPU": 1.0}] * 2
    assert all(s.resources == {"num_cpus": 0.5} for s in cpu.rollout + cpu.learner)


def test_a_tensor_parallel_engine_gets_a_bundle_of_its_gpus():
    lay = plan_layout(num_rollout=2, num_ranks=1, colocate=False, gpu=True, engine_gpus=2)
    assert lay.bundles == [{"CPU": 1.0, "GPU": 2.0}] * 2 + [{"CPU": 1.0, "GPU": 1.0}]
    assert all(s.resources == {"num_cpus": 1.0, "num_gpus": 2.0} for s in lay.rollout)
    assert lay.learner[0].resources == {"num_cpus": 1.0, "num_gpus": 1.0}
    cpu = plan_layout(1, 1, colocate=False, gpu=False, engine_gpus=2)  # vLLM's own processes
    assert cpu.bundles == [{"CPU": 1.0}] * 2
    with pytest.raises(ConfigError, match="tensor_parallel_size=2"):
        plan_layout(1, 1, colocate=True, gpu=True, engine_gpus=2)


def test_no_placement_group_keeps_the_plain_resources():
    lay = plan_layout(1, 1, colocate=False, gpu=False, use_group=False)
    assert [s.bundle for s in lay.rollout + lay.learner] == [None, None]
    assert lay.learner[0].resources == {"num_cpus": 1.0}  # what the actors asked for before


@pytest.mark.parametrize("kwargs, key", [
    (dict(placement="strict"), "cluster.placement"),
    (dict(device="tpu"), "cluster.device"),
    (dict(colocate=True), "cluster.colocate"),  # colocation needs a placement group
    (dict(placement_timeout_s=0), "cluster.placement_timeout_s"),
])
def test_bad_cluster_settings_name_the_key_and_a_fix(kwargs, key):
    with pytest.raises(ConfigError, match=key) as err:
        ClusterConfig(**kwargs)
    assert "set " in str(err.value)


def test_cluster_defaults_keep_the_one_machine_behaviour():
    from hydra import compose, initialize_config_dir

    from launch.config import validate

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        run = validate(compose(config_name="config"))
    cluster = run.cluster
    assert (cluster.placement, cluster.colocate, cluster.device) == ("none", False, "auto")


# ----------------------------------------------------------------------------- slow: Ray


@pytest.fixture(scope="module")
def two_nodes():
    """A head node and a second node (3 CPUs each) on this machine, under a private RAY_TMPDIR."""
    from ray.cluster_utils import Cluster

    from launch.placement import free_port

    saved = os.environ.get("RAY_TMPDIR")
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a limit
    os.environ["RAY_TMPDIR"] = tmp
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 3, "include_dashboard": False, "dashboard_port": free_port()})
        cluster.add_node(num_cpus=3)
        yield cluster
    finally:
        if cluster is not None:
            cluster.shutdown()  # kills this cluster's processes; deletes its own address file
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_two_node_spread_run_puts_engines_and_ranks_on_both_nodes(two_nodes, tiny_model_dir,
                                                                   tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "RAY_DEDUP_LOGS": "0"}
    cmd = [sys.executable, "-m", "launch.run", "+experiment=smoke", f"model.path={tiny_model_dir}",
           f"hydra.run.dir={tmp_path}", "cluster.dashboard=false",
           f"cluster.address={two_nodes.address}",
           "cluster.placement=spread", "learner.num_ranks=2", "rollout.num_actors=2", "rollout=hf",
           "eval.samples=1", "data.eval_size=8"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    # where the actors ran, from Ray's GCS actor table (dead actors stay listed)
    nodes = {n.node_id for n in two_nodes.list_all_nodes()}
    assert len(nodes) == 2
    where: dict[str, set[str]] = {}
    for actor in two_nodes.global_state.actor_table(None).values():
        where.setdefault(actor["Name"], set()).add(actor["Address"]["NodeID"])
    rollout = set().union(*(where[f"rollout-{i}"] for i in range(2)))
    learners = [where[f"learner-{r}"] for r in range(2)]
    assert rollout == nodes, where  # SPREAD: the engines on different nodes
    assert set().union(*learners) == nodes, where  # and the ranks: gloo across nodes
    assert "placement: spread on CPU over 2 node(s)" in proc.stdout
    print(next(line for line in proc.stdout.splitlines() if line.startswith("placement:")))

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = sane_steps(rows, steps=2, max_new_tokens=32)
    assert "phi/pg_loss" in steps[0] and "actor/pg_loss" in steps[1]  # introllm: phi, then theta
    assert "actor/rollout_logp_diff_max" in steps[1]  # both ranks' slices, both engines' rows
    assert torch.isfinite(torch.tensor(steps[1]["actor/pg_loss"]))
    # the two ranks wrote the checkpoint's model/ together (round-robin), across the nodes:
    # every weight is there, loadable, equal to what the learners hold
    ckpt = sorted((tmp_path / "checkpoints").glob("step_*"))[-1]
    theta = read_weights(ckpt / "model")
    final = read_weights(tmp_path / "final_model")
    assert theta.keys() == final.keys() and all(torch.equal(theta[k], final[k]) for k in theta)


# ----------------------------------------------------------------------------- slow: object refs

SMALL = 4096  # bytes: the largest tensor, or pickled value, the driver may receive (metric dicts:
# < 1 KB; one engine's share of this step's batch: ~10 KB)


def _received(value, found: list) -> None:
    """Record every TrajectoryBatch / tensor / container inside a value the driver received."""
    from rollout.trajectory import TrajectoryBatch

    if isinstance(value, TrajectoryBatch):
        found.append(("TrajectoryBatch", len(pickle.dumps(value))))
    elif isinstance(value, torch.Tensor):
        found.append(("Tensor", value.numel() * value.element_size()))
    elif isinstance(value, dict):
        for v in value.values():
            _received(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _received(v, found)


@pytest.mark.slow
def test_trajectories_move_by_ref_and_never_enter_the_driver(tiny_model_dir, tmp_path, monkeypatch):
    import ray
    from hydra import compose, initialize_config_dir

    from launch.config import validate
    from launch.pipeline import load_data
    from launch.trainer import Trainer
    from rollout.trajectory import TrajectoryBatch

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "+experiment=smoke", "rollout=hf", f"model.path={tiny_model_dir}",
            "cluster.dashboard=false", "reward.num_workers=0", "data.eval_size=0",
            "rollout.num_actors=2", "cluster.placement=pack", "meta=tampo"])
    run = validate(cfg)
    train, heldout = load_data(run)
    trainer = Trainer(run, str(tmp_path), str(tiny_model_dir), train, heldout)
    try:
        trainer.setup()
        gets, unpickled = [], []
        real_get = ray.get

        def spy_get(refs, *args, **kwargs):
            out = real_get(refs, *args, **kwargs)
            gets.append(out)
            return out

        def count_unpickle(self, state):  # the driver building a TrajectoryBatch from bytes
            unpickled.append(type(self).__name__)
            self.__dict__.update(state)

        monkeypatch.setattr(ray, "get", spy_get)
        monkeypatch.setattr(TrajectoryBatch, "__setstate__", count_unpickle, raising=False)
        metrics = trainer.step(0)

        assert gets, "the spy saw no ray.get: the trainer no longer calls ray.get?"
        found: list = []
        for value in gets:
            _received(value, found)
            assert len(pickle.dumps(value)) <= SMALL, type(value)  # a batch here is ~10 KB
        assert not [f for f in found if f[0] == "TrajectoryBatch"], found
        assert all(size <= SMALL for _, size in found), found
        assert unpickled == []
        assert 0.0 <= metrics["critic/score/mean"] <= 1.0 and "tampo/pi_entropy" in metrics

        # the detectors have teeth: fetching a batch in the driver trips both
        reqs = trainer.requests_for(1)[0][0]  # (parts, planned): actor 0's part
        spy_get(trainer.rollout[0].generate.remote(reqs, 1, 0))
        found = []
        _received(gets[-1], found)
        assert found and found[0][0] == "TrajectoryBatch" and unpickled == ["TrajectoryBatch"]
    finally:
        monkeypatch.undo()
        trainer.shutdown()


@pytest.mark.slow
def test_placement_stops_with_a_fix_when_the_cluster_cannot_hold_it(two_nodes):
    import ray

    from launch.placement import Placement

    ray.init(address=two_nodes.address, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(ConfigError, match="cluster.placement=pack"):
            Placement(ClusterConfig(placement="pack"), 5, 2)  # 7 CPU bundles, 6 CPUs
        with pytest.raises(ConfigError, match="cluster.device"):
            Placement(ClusterConfig(placement="pack", device="gpu"), 1, 1)
        with pytest.raises(ConfigError, match="cluster.placement=pack"):  # 127.0.0.1 across nodes
            Placement(ClusterConfig(), 1, 2).rendezvous()
        blocker = ray.util.placement_group([{"CPU": 1.0}] * 5)  # 1 CPU left of 6
        ray.get(blocker.ready())
        with pytest.raises(RuntimeError, match="placement_timeout_s"):  # fits the totals only
            Placement(ClusterConfig(placement="pack", placement_timeout_s=2), 1, 1)
        ray.util.remove_placement_group(blocker)
        states = [pg["state"] for pg in ray.util.placement_group_table().values()]
        assert states and all(s == "REMOVED" for s in states), states  # the failed group too
    finally:
        ray.shutdown()
