"""Where the rollout engines and the learner ranks run: Ray placement groups, on GPUs or CPUs.

``cluster.placement``:

    none    no placement group: each actor asks for its resources and Ray's scheduler places
            it (the single-machine CPU default); learner ranks rendezvous on 127.0.0.1
    pack    one placement group, packed onto as few nodes as possible
    spread  the same placement group, its bundles spread across nodes

One bundle is one accelerator: ``{"GPU": 1, "CPU": n}`` on GPUs, ``{"CPU": 1}`` on CPUs, so the
CPU path runs the same code as the GPU one. ``cluster.colocate``:

    false   separate pools: one bundle per actor, engines first, then learner ranks
    true    engine i and learner rank i share bundle i (num_gpus=0.5 each on GPUs,
            num_cpus=0.5 each on CPUs)

The reward and meta actors use CPUs only and stay outside the group. With a placement group the
learner ranks rendezvous at the node of learner rank 0's bundle (its IP and a port that is free
there), so ranks may sit on different machines.

``plan_layout`` is pure (no Ray); ``Placement`` creates the group and hands out actor options.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from launch.config import ClusterConfig, ConfigError


@dataclass(frozen=True)
class Slot:
    """One actor's share of the cluster."""

    bundle: int | None
    """index of its placement-group bundle; None = no placement group"""
    resources: dict[str, float]
    """Ray actor options: num_cpus and, on GPUs, num_gpus"""


@dataclass(frozen=True)
class Layout:
    bundles: list[dict[str, float]]
    """the placement group's bundles (also computed for placement=none, then unused)"""
    rollout: list[Slot]
    learner: list[Slot]


def plan_layout(num_rollout: int, num_ranks: int, colocate: bool, gpu: bool,
                use_group: bool = True, engine_gpus: int = 1) -> Layout:
    """Bundles and each actor's slot; an actor sharing a bundle with k-1 others gets 1/k of it.

    ``engine_gpus``: GPUs per rollout engine (vLLM's tensor-parallel size): its bundle holds that
    many, and its actor asks for all of them (vLLM's worker processes inherit the actor's
    visible GPUs). On CPUs an engine's tensor-parallel worker processes are vLLM's own, outside
    Ray's CPU accounting, so its slot stays one CPU.
    """
    if colocate and gpu and engine_gpus > 1:
        raise ConfigError(f"cluster.colocate=true shares one GPU between engine i and learner rank "
                          f"i, but rollout.tensor_parallel_size={engine_gpus} needs {engine_gpus} "
                          f"GPUs per engine; set cluster.colocate=false")
    if colocate:
        n = max(num_rollout, num_ranks)
        rollout_b, learner_b = list(range(num_rollout)), list(range(num_ranks))
    else:
        n = num_rollout + num_ranks
        rollout_b, learner_b = list(range(num_rollout)), [num_rollout + r for r in range(num_ranks)]
    share = [rollout_b.count(j) + learner_b.count(j) for j in range(n)]  # actors per bundle
    gpus = [float(engine_gpus) if j in rollout_b and not colocate else 1.0 for j in range(n)]
    bundles = [{"CPU": float(k), "GPU": g} if gpu else {"CPU": 1.0} for k, g in zip(share, gpus)]

    def slot(b: int) -> Slot:
        res = {"num_cpus": 1.0, "num_gpus": gpus[b] / share[b]} if gpu else \
            {"num_cpus": 1.0 / share[b]}
        return Slot(b if use_group else None, res)

    return Layout(bundles, [slot(b) for b in rollout_b], [slot(b) for b in learner_b])


class Placement:
    """The run's placement: creates the placement group (if any) and gives actor options.

    Call after ``ray.init``. Raises ConfigError (key, rule, fix) when the settings cannot work on
    this cluster (too few CPUs/GPUs in total, device=gpu without GPUs, ranks across nodes without
    a group), RuntimeError when the group is still not placed after cluster.placement_timeout_s.
    """

    def __init__(self, cfg: ClusterConfig, num_rollout: int, num_ranks: int, engine_gpus: int = 1):
        import ray

        self.cfg, self.num_ranks = cfg, num_ranks
        self.gpu = _use_gpu(cfg.device, ray.cluster_resources().get("GPU", 0.0))
        self.layout = plan_layout(num_rollout, num_ranks, cfg.colocate, self.gpu,
                                  use_group=cfg.placement != "none", engine_gpus=engine_gpus)
        self._check_totals()
        self.pg = None
        if cfg.placement != "none":
            self.pg = self._create_group()

    def _check_totals(self) -> None:
        """Fail now, not after a wait, when the whole cluster is too small for the layout."""
        import ray

        need = {k: sum(b.get(k, 0.0) for b in self.layout.bundles) for k in ("CPU", "GPU")}
        have = ray.cluster_resources()
        for key, amount in need.items():
            if amount > have.get(key, 0.0):
                raise ConfigError(
                    f"cluster.placement={self.cfg.placement} needs {amount:g} {key} for "
                    f"{_counts(self.layout)}, but the Ray cluster has {have.get(key, 0.0):g}; "
                    + _fix(self.cfg, key))

    def _create_group(self):
        import ray
        from ray.util.placement_group import placement_group

        bundles = self.layout.bundles
        pg = placement_group(bundles, strategy=self.cfg.placement.upper())
        try:
            ray.get(pg.ready(), timeout=self.cfg.placement_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(pg)
            raise RuntimeError(
                f"the placement group ({len(bundles)} bundles {bundles[0]}, strategy "
                f"{self.cfg.placement.upper()}) was not ready after "
                f"{self.cfg.placement_timeout_s:g} s: the cluster's free resources are "
                f"{ray.available_resources()}; free some, add nodes, or raise "
                f"cluster.placement_timeout_s") from None
        return pg

    def _options(self, slot: Slot) -> dict:
        if slot.bundle is None:
            return dict(slot.resources)
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {**slot.resources, "scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.pg, placement_group_bundle_index=slot.bundle)}

    def rollout_options(self, i: int) -> dict:
        """Ray actor options (resources, scheduling strategy) of rollout engine i."""
        return self._options(self.layout.rollout[i])

    def learner_options(self, r: int) -> dict:
        """Ray actor options of learner rank r."""
        return self._options(self.layout.learner[r])

    def rendezvous(self) -> tuple[str, int]:
        """(MASTER_ADDR, MASTER_PORT) for the learner ranks' process group."""
        import ray

        if self.pg is None:
            nodes = [n for n in ray.nodes() if n["Alive"]]
            if self.num_ranks > 1 and len(nodes) > 1:
                raise ConfigError(
                    f"cluster.placement (none) cannot place {self.num_ranks} learner ranks on a "
                    f"{len(nodes)}-node cluster: without a placement group they rendezvous on "
                    f"127.0.0.1 and may land on different machines; set cluster.placement=pack "
                    f"(or spread)")
            return "127.0.0.1", free_port()
        strategy = self._options(self.layout.learner[0])["scheduling_strategy"]
        probe = ray.remote(num_cpus=0)(_node_address).options(scheduling_strategy=strategy)
        return ray.get(probe.remote())

    def describe(self) -> str:
        """One line: the device and, with a group, which node holds each actor's bundle."""
        if self.pg is None:
            device = "GPU" if self.gpu else "CPU"
            return f"placement: none ({device}; Ray's scheduler places actors)"
        from ray.util.placement_group import placement_group_table

        nodes = placement_group_table(self.pg)["bundles_to_node_id"]
        where = [f"rollout-{i}@{nodes[s.bundle][:8]}" for i, s in enumerate(self.layout.rollout)]
        where += [f"learner-{r}@{nodes[s.bundle][:8]}" for r, s in enumerate(self.layout.learner)]
        return (f"placement: {self.cfg.placement} on {'GPU' if self.gpu else 'CPU'} over "
                f"{len(set(nodes.values()))} node(s): {', '.join(where)}")


def _use_gpu(device: str, cluster_gpus: float) -> bool:
    if device == "gpu" and cluster_gpus < 1:
        raise ConfigError("cluster.device (gpu) needs GPUs, but the Ray cluster has none; "
                           "set cluster.device=cpu (or auto), or start Ray on GPU nodes")
    return device == "gpu" or (device == "auto" and cluster_gpus >= 1)


def _counts(layout: Layout) -> str:
    return f"{len(layout.rollout)} rollout engines, {len(layout.learner)} learner ranks"


def _fix(cfg: ClusterConfig, key: str) -> str:
    if key == "GPU" and not cfg.colocate:
        return ("set cluster.placement=pack cluster.colocate=true (engine i shares a GPU with "
                "learner rank i) or use fewer actors")
    if key == "CPU" and cfg.address is None:
        return "raise cluster.num_cpus or use fewer actors"
    return "use fewer actors or a larger cluster"


def _node_address() -> tuple[str, int]:
    """(this node's IP, a TCP port free on it a moment ago): runs inside learner 0's bundle."""
    import ray

    return ray.util.get_node_ip_address(), free_port("")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
