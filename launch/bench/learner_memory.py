"""The learner at scale on CPU: peak memory per rank at start-up, in a theta step and at save,
and the seconds of save, verify and resume, for two DeepSpeed ranks (gloo) in settings of
ZeRO stage, CPU offload and gradient checkpointing (``launch.bench learner --memory``).

Each setting runs in fresh processes: two ranks (spawned) build a ``LearnerWorker`` on the model
folder (start-up; its model load measured apart: the peak when ``deepspeed.initialize`` is
called, before ZeRO allocates its own state), take one theta step on a synthetic batch (random
tokens, every response trained: its activations are what gradient checkpointing saves), and
write a checkpoint, every
rank at once; this process then commits (the manifest: hashes) and verifies it; two fresh ranks
build again and resume from it. Memory is each rank's private resident memory (RSS minus the
shared, file-backed pages such as a memory-mapped checkpoint), sampled every 20 ms in the rank,
over the same rank's baseline after its imports; for the model load also the resident memory
with file-backed pages (what a rank read of a memory-mapped model file).

Self-contained on purpose (``launch.bench learner --memory --baseline REF`` runs it over another
commit's tree): it touches ``LearnerWorker``, ``LearnerConfig``, ``rollout.base`` and
``launch.checkpoint``, and adapts to the two checkpoint interfaces (format 2: a rank folder each,
the driver hashing every file; format 3: the step folder, each rank hashing what it wrote).

    python launch/bench/learner_memory.py MODEL SETTING [--prompts 4 --group 2 --tokens 128]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import threading
import time

SETTINGS = {
    "zero0": {"zero_stage": 0},
    "zero2": {"zero_stage": 2},
    "zero3": {"zero_stage": 3},
    "zero3+gc": {"zero_stage": 3, "gradient_checkpointing": True},
    "zero3+offload": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
}
"""named learner settings (the offload and checkpointing keys exist from format 3 on)"""


class _Peak:
    """This process's peak private resident memory while alive (sampled every 20 ms), and its
    peak resident memory with the file-backed pages it touched (``resident``: a memory-mapped
    model file counts as far as the rank read it)."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self.peak = self.now()
        self.resident = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        info = self._proc.memory_info()
        return info.rss - info.shared

    def _run(self):
        while not self._stop.wait(0.02):
            info = self._proc.memory_info()
            self.peak = max(self.peak, info.rss - info.shared)
            self.resident = max(self.resident, info.rss)

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def _batch(args, rank: int, world: int):
    """This rank's slice of a seeded synthetic batch: P prompts x G responses of random tokens,
    mixed advantages (every response trained)."""
    import torch

    from rollout.base import ResponseRecord, RolloutRequest, assemble_batch

    g = torch.Generator().manual_seed(0)
    reqs, recs = [], []
    for p in range(args.prompts):
        prompt = torch.randint(3, 300, (args.tokens // 2,), generator=g).tolist()
        for _ in range(args.group):
            ids = torch.randint(3, 300, (args.tokens,), generator=g).tolist()
            reqs.append(RolloutRequest(prompt, p, 1.0))
            recs.append(ResponseRecord(ids, [1.0] * len(ids), [-1.0] * len(ids), "length"))
    batch = assemble_batch(reqs, recs, 0)
    batch.rewards = (torch.arange(len(batch)) % 2).float()
    batch.advantages = batch.rewards * 2 - 1
    return batch.split(world)[rank]


def _rank(rank: int, world: int, port: int, model: str, setting: str, ckpt: str, resume: bool,
          args, queue) -> None:
    """One spawned learner rank: build (and train one step and save, or resume)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    import deepspeed

    from launch.config import LearnerConfig
    from learner import checkpoint as ckpt_format
    from learner.worker import LearnerWorker

    peak = _Peak()
    base, base_resident = peak.now(), peak.resident
    out = {"rank": rank, "baseline": base}
    initialize = deepspeed.initialize

    def timed_initialize(*a, **kw):  # the model is loaded (and partitioned or not) by now
        out.setdefault("load_peak", max(peak.peak, peak.now()) - base)
        out.setdefault("load_resident", peak.resident - base_resident)
        return initialize(*a, **kw)

    deepspeed.initialize = timed_initialize
    cfg = LearnerConfig(**SETTINGS[setting], micro_batch_size=args.micro_batch_size)
    worker = LearnerWorker(model, cfg, rank=rank, world_size=world, master_addr="127.0.0.1",
                           master_port=port)
    deepspeed.initialize = initialize
    out["startup_peak"] = peak.close() - base
    format3 = getattr(ckpt_format, "FORMAT", 2) >= 3
    target = ckpt if format3 else os.path.join(ckpt, f"learner_rank{rank}")
    if resume:
        peak = _Peak()
        t0 = time.perf_counter()
        worker.load_checkpoint(target)
        out["resume_s"], out["resume_peak"] = time.perf_counter() - t0, peak.close() - base
    else:
        batch = _batch(args, rank, world)
        peak = _Peak()
        t0 = time.perf_counter()
        stats, _ = worker.update_theta(batch)
        out["step_s"], out["step_peak"] = time.perf_counter() - t0, peak.close() - base
        out["loss"] = stats["actor/pg_loss"]
        peak = _Peak()
        t0 = time.perf_counter()
        written = worker.save_checkpoint(target)
        out["save_s"], out["save_peak"] = time.perf_counter() - t0, peak.close() - base
        out["written"] = written if isinstance(written, dict) else {}
    queue.put(out)


def _ranks(world: int, model: str, setting: str, ckpt: str, resume: bool, args) -> list[dict]:
    import torch.multiprocessing as mp

    from learner.ds_utils import free_port

    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, model, setting, ckpt, resume, args,
                                             queue)) for r in range(world)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a learner rank of {setting} exited with {p.exitcode}")
    return sorted(got, key=lambda r: r["rank"])


def measure(model: str, setting: str, args) -> dict:
    """Start-up, step and save in two ranks; commit and verify here; resume in two more."""
    from launch import checkpoint

    root = tempfile.mkdtemp(prefix="bench_learner_memory_")
    tmp = checkpoint.stage(root, 1)
    ranks = _ranks(args.ranks, model, setting, str(tmp), False, args)
    written = {k: v for r in ranks for k, v in r.pop("written").items()}
    t0 = time.perf_counter()
    if "written" in inspect.signature(checkpoint.commit).parameters:
        final = checkpoint.commit(tmp, 1, written)
    else:
        final = checkpoint.commit(tmp, 1)  # format 2: the driver hashes every file itself
    commit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    checkpoint.verify(final)
    verify_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    resumed = _ranks(args.ranks, model, setting, str(final), True, args)
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return {"setting": setting, "ranks": ranks, "resumed": resumed,
            "save_s": max(r["save_s"] for r in ranks) + commit_s, "commit_s": commit_s,
            "verify_s": verify_s, "resume_s": max(r["resume_s"] for r in resumed),
            "checkpoint_bytes": size}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("setting", choices=list(SETTINGS))
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128, help="response tokens (prompts: half)")
    p.add_argument("--micro-batch-size", type=int, default=4)
    args = p.parse_args(argv)
    out = measure(args.model, args.setting, args)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
