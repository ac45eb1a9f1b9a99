"""The rollout benchmark's arms: one engine per shape, one arm per (engine, strategy); used in
this process by ``launch.bench rollout``, and served to it from a child process over another
commit's tree for ``--baseline REF`` (``python rollout_arms.py``: one JSON line in, the spec;
then one JSON line out per request, marked with ``MARK``).

Self-contained on purpose: it touches only the interfaces the rollout code has had since the
benchmark was written (``rollout.worker.build_engine``, ``launch.config.RolloutConfig``,
``meta.build_strategy``, ``rollout.base.RolloutRequest``, ``engine.set_strategy / generate``),
so that the same file drives either tree's engines.

    spec = {"model", "engines": {name: RolloutConfig fields}, "strategies", "prompt_ids",
            "group", "seed", "temperature", "max_new_tokens", "max_prompt_tokens",
            "hf_batch_size", "max_num_seqs"}
"""

from __future__ import annotations

import json
import sys
import time

MARK = "@@tempo-arms "
"""prefix of the child's protocol lines on its stdout (vLLM and others print there too)"""


def build_arms(spec: dict, opened: list) -> tuple[dict, dict]:
    """({arm name: (setup, run)}, {engine name: start seconds}); engines go to ``opened``.
    Every engine's strategies are its own objects, seeded alike (IntroLLM heads start equal)."""
    import torch

    from launch.config import RolloutConfig
    from meta import STRATEGIES, build_strategy
    from rollout.base import RolloutRequest
    from rollout.vllm_overlay import read_config
    from rollout.worker import build_engine

    config = read_config(spec["model"])
    hidden = int((config.get("text_config") or config)["hidden_size"])

    def make_strategy(name):
        torch.manual_seed(spec["seed"])
        if STRATEGIES[name].learns_head:  # introllm or fixed
            return build_strategy(name, hidden_size=hidden)
        return build_strategy(name, temperature=spec["temperature"])

    def requests_for(strategy):
        base = strategy.plan(0, len(spec["prompt_ids"])).tolist()  # (P,) base tau per prompt
        return [RolloutRequest(ids, g, base[g]) for g, ids in enumerate(spec["prompt_ids"])
                for _ in range(spec["group"])]

    arms, start = {}, {}
    for engine_name, fields in spec["engines"].items():
        cfg = RolloutConfig(**fields, group_size=spec["group"],
                            max_new_tokens=spec["max_new_tokens"],
                            max_prompt_tokens=spec["max_prompt_tokens"],
                            batch_size=spec["hf_batch_size"], max_num_seqs=spec["max_num_seqs"])
        own = {s: make_strategy(s) for s in spec["strategies"]}
        t0 = time.perf_counter()
        engine = build_engine(spec["model"], own[spec["strategies"][0]], cfg, seed=spec["seed"])
        opened.append(engine)
        start[engine_name] = round(time.perf_counter() - t0, 1)
        for s in spec["strategies"]:
            arms[f"{engine_name}:{s}"] = _arm(engine, own[s], requests_for(own[s]), spec["seed"])
    return arms, start


def _arm(engine, strategy, requests, seed):
    """(setup: swap ``strategy`` into ``engine``, run: one timed ``generate`` of ``requests``)."""
    def setup():
        engine.set_strategy(strategy)

    def run(r: int) -> dict:
        batch = engine.generate(requests, step=0, seed=seed * 1000 + r)
        out = {"tokens": int(batch.response_mask.sum()),
               "select_s": batch.stats["select_s"],  # timed where select runs (vLLM: its workers)
               "mean_len": float(batch.response_mask.sum(-1).float().mean())}
        if batch.gate is not None:
            out["mean_tau"] = float(batch.tau[batch.response_mask].mean())
        return out

    return setup, run


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    """The child's loop: the spec, then {"arm", "round"} requests until EOF; each reply is the
    arm's result plus its own clocks (``seconds``, ``cpu_seconds``: this process's)."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    opened: list = []
    arms, start = build_arms(json.loads(stdin.readline()), opened)
    print(MARK + json.dumps({"arms": list(arms), "engine_start_s": start}), file=stdout,
          flush=True)
    try:
        for line in stdin:
            request = json.loads(line)
            setup, run = arms[request["arm"]]
            setup()
            t0, c0 = time.perf_counter(), time.process_time()
            out = run(request["round"])
            out.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0)
            print(MARK + json.dumps(out), file=stdout, flush=True)
    finally:
        for engine in opened:
            if hasattr(engine, "close"):
                engine.close()


if __name__ == "__main__":
    serve()
