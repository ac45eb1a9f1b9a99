"""``python -m launch.bench sync``: one weight sync of theta, learner parameters to an engine
ready to generate, by the two paths of ``rollout.weight_sync``, side by side on one system:

* ``object_store``: every learner rank gathers the full state dict (ZeRO-3), copies it to the
  CPU and returns it through Ray's object store; rank 0's goes to the rollout actor, which packs
  it into bytes for the engine core's process, which sends it on to every tensor-parallel worker;
* ``collective``: vLLM's weight-transfer API (``rollout.weight_transfer``): the learner ranks
  gather one decoder layer at a time, rank 0 broadcasts packed buffers to every engine worker
  (gloo here, NCCL on GPUs); names, dtypes and shapes go by RPC.

The system is the run's own (``launch.trainer.Trainer`` with Ray, two DeepSpeed learner ranks
under ZeRO-3 on gloo, one vLLM engine with its engine core in its own process and two tensor-
parallel workers), on random-weight Qwen2-shaped models (``launch.build_model`` with
``sft_steps=0``, cached) of about 0.1B and 0.25B parameters in fp32. Each size gets a fresh
system; the paths alternate sync by sync (ABBA), after one uncounted warm-up sync each.

Per round and path, two syncs. The first is measured for memory: the peak extra memory summed
over every process of the run (the driver and all it started: Ray, the actors, vLLM's
processes), as a multiple of the model's size S, sampled every ~50 ms as the sum of each
process's proportional set size (PSS: pages shared by several processes, such as Ray's object
store, counted once) minus the sum just before the sync; and the bytes Ray's object store created
during it (its own counter, ``cumulative_created_bytes``). The second is timed (wall, the
driver's call), with no sampling: reading every process's PSS takes CPU time from the sync.
The first round of each path is a warm-up (its first allocations), reported but not counted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

PATHS = ("collective", "object_store")


def add_sync_parser(sub) -> None:
    p = sub.add_parser("sync", help="weight sync: vLLM's weight-transfer API vs the object store",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="0.1,0.25",
                   help="comma list of tiny, 0.1, 0.25 (harness.RANDOM_MODELS)")
    p.add_argument("--paths", default=",".join(PATHS),
                   help="comma list of collective, object_store")
    p.add_argument("--object-store-up-to", default="0.1", metavar="SIZE",
                   help="run the object-store path only up to this size (on 24 GiB it does not "
                   "fit at 0.25: Ray's memory monitor kills its workers); '' = every size")
    p.add_argument("--reps", type=int, default=3, help="counted syncs per path and size")
    p.add_argument("--ranks", type=int, default=2, help="learner ranks (ZeRO-3)")
    p.add_argument("--tp", type=int, default=2, help="the engine's tensor-parallel size")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra Hydra override, repeatable")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=bench_sync)


class MemorySampler:
    """Peak of the summed PSS of this process and all it started, sampled in a thread."""

    def __init__(self, period_s: float = 0.05):
        self.period_s = period_s
        self.samples: list[float] = []
        self._stop = threading.Event()

    @staticmethod
    def total() -> float:
        import psutil

        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return float(total)

    def __enter__(self):
        self.samples = [self.total()]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.period_s):
            self.samples.append(self.total())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(self.total())

    @property
    def peak(self) -> float:
        return max(self.samples)


def object_store_created_bytes() -> int:
    """Bytes Ray's object store (every node) has created so far."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    return int(get_memory_info_reply(get_state_from_address()).store_stats
               .cumulative_created_bytes)


def bench_sync(args) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from launch.bench.harness import RANDOM_MODELS, split_list

    sizes = split_list(args.sizes, tuple(RANDOM_MODELS), "--sizes")
    paths = split_list(args.paths, PATHS, "--paths")
    if args.reps < 1:
        raise SystemExit(f"--reps ({args.reps}) must be >= 1")
    from launch.bench.harness import Table, machine_info, print_block, print_tables, summarize

    settings = {"sizes": sizes, "paths": paths, "object_store_up_to": args.object_store_up_to,
                "reps": args.reps, "learner_ranks": args.ranks,
                "zero_stage": 3, "engine_core": "process", "tensor_parallel_size": args.tp,
                "dtype": "float32", "overrides": args.overrides}
    machine = machine_info()
    print_block("machine", machine)
    print_block("settings", settings)
    order = list(RANDOM_MODELS)  # smallest first
    limit = order.index(args.object_store_up_to) if args.object_store_up_to else len(order)
    results = {size: _one_size(size, [p for p in paths if p != "object_store"
                                      or order.index(size) <= limit], args)
               for size in sizes}
    table = Table(["size", "S (GB)", "path", "s/sync median", "min - max", "s per GB",
                   "peak extra / S", "object store bytes / S"],
                  title="one theta sync, learner to engine ready (median over syncs)")
    for size, r in results.items():
        s_gb = r["model_bytes"] / 1e9
        for path in r["syncs"]:
            sec = summarize([x["seconds"] for x in r["syncs"][path]])
            extra = summarize([x["extra_bytes"] / r["model_bytes"] for x in r["syncs"][path]])
            store = summarize([x["object_store_bytes"] / r["model_bytes"]
                               for x in r["syncs"][path]])
            r.setdefault("summary", {})[path] = {"seconds": sec.as_dict(),
                                                  "extra_over_S": extra.as_dict(),
                                                  "object_store_over_S": store.as_dict()}
            table.add(size, f"{s_gb:.2f}", path, f"{sec.median:.2f}",
                      f"{sec.min:.2f} - {sec.max:.2f}", f"{sec.median / s_gb:.2f}",
                      f"{extra.median:.2f}", f"{store.median:.2f}")
    ratio = Table(["size", "object_store s / collective s", "collective peak extra / S"],
                  title="collective vs object store")
    for size, r in results.items():
        sm = r["summary"]
        if set(PATHS) <= set(sm):
            speed = sm["object_store"]["seconds"]["median"] / sm["collective"]["seconds"]["median"]
            ratio.add(size, f"{speed:.1f}x", f"{sm['collective']['extra_over_S']['median']:.2f}")
    print_tables(table, ratio)
    return {"benchmark": "sync", "machine": machine, "settings": settings, "sizes": results}


def _one_size(size: str, paths: list[str], args) -> dict:
    """A fresh system over the ``size`` model; ``args.reps`` counted syncs per path."""
    from launch.bench.harness import RANDOM_MODELS, model_bytes, random_model, schedule
    from launch.config import compose_run
    from launch.trainer import Trainer

    model = random_model(size)
    s_bytes = model_bytes(model)
    run = compose_run(["+experiment=smoke", "meta=fixed", f"model.path={model}",
                       f"learner.num_ranks={args.ranks}", "learner.zero_stage=3",
                       "rollout.engine_core=process",
                       f"rollout.tensor_parallel_size={args.tp}",
                       "rollout.weight_sync=collective", "cluster.dashboard=false",
                       "wandb.mode=disabled", *args.overrides])
    trainer = Trainer(run, tempfile.mkdtemp(prefix="bench_sync_"), str(model), [], [])
    print(f"\n{size}B model: {model} ({s_bytes / 1e9:.2f} GB)")
    trainer.setup()
    syncs: dict[str, list[dict]] = {p: [] for p in paths}
    try:
        for r, path in schedule(paths, 1 + args.reps):
            trainer.weight_sync = path
            time.sleep(1.0)  # the last sync's frees settle
            with MemorySampler() as mem:  # sampling costs CPU: this sync is not timed
                before = object_store_created_bytes()
                trainer.sync_weights("theta")
                created = object_store_created_bytes() - before
            time.sleep(1.0)
            t0 = time.perf_counter()
            trainer.sync_weights("theta")
            seconds = time.perf_counter() - t0
            sample = {"seconds": seconds, "extra_bytes": mem.peak - mem.samples[0],
                      "object_store_bytes": created, "memory_samples": len(mem.samples)}
            tag = "warm-up" if r == 0 else f"rep {r}/{args.reps}"
            print(f"  {tag:>9}  {path:<12} {seconds:7.2f} s  peak extra "
                  f"{sample['extra_bytes'] / s_bytes:5.2f} S  object store "
                  f"{sample['object_store_bytes'] / s_bytes:5.2f} S")
            if r > 0:
                syncs[path].append(sample)
    finally:
        trainer.shutdown()
    return {"model": str(model), "model_bytes": s_bytes, "spec": RANDOM_MODELS[size],
            "syncs": syncs}
