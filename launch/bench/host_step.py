"""The host's share of a decode step's per-token-temperature path, per number of rows.

What ``compute_logits`` adds to a vLLM decode step for the per-token temperature (the row
source's rows, τ_{t-1}, the strategy's ``select``, the division, the records), timed on the host
for N rows being decoded, with hidden size and vocabulary of 8 so that the arithmetic itself is
negligible: what is left is the host's work (Python, numpy, torch's dispatch), the part a GPU
cannot hide when it exceeds the device's step. It drives the real ``V1RowTracker`` (through
vLLM's batch updates) and ``TempoRuntime`` as vLLM's model runner V1 does, one decoding step at
a time (every row samples one token, which the next step sees).

Self-contained on purpose: it uses only the interfaces the rollout code has had since the
engine was written (``V1RowTracker(None, device, False)``, ``update_state``,
``TempoRuntime(rows, strategy)``, ``begin``, ``on_compute_logits``), so ``launch.bench rollout
--baseline REF`` runs this same file over another commit's tree (its own ``rollout`` and
``meta`` packages on ``sys.path``) and prints both side by side.

    python launch/bench/host_step.py --rows 8,64,256 --steps 60     # prints JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def measure(rows: int, steps: int = 60, warmup: int = 5, device: str = "cpu",
            strategy: str = "introllm") -> dict:
    """Median and quartiles of the host microseconds of one decode step's head path."""
    import torch
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    import meta
    from rollout.vllm_model import TempoRuntime
    from rollout.vllm_rows import BASE_TAU, KEY, V1RowTracker

    torch.manual_seed(0)
    d = v = 8
    s = meta.build_strategy("introllm", hidden_size=d) if strategy == "introllm" else \
        meta.build_strategy("fixed", temperature=1.0)
    tracker = V1RowTracker(None, torch.device(device), False)
    runtime = TempoRuntime(tracker, s)
    runtime.begin(0, 0)
    outputs = [[] for _ in range(rows)]
    added = [(i, SamplingParams(extra_args={KEY: f"r{i}", BASE_TAU: 1.0}), [1], outputs[i])
             for i in range(rows)]
    tracker.update_state(BatchUpdate(batch_size=rows, removed=[], added=added, moved=[]))
    hidden = torch.randn(rows, d, device=device)
    logits = torch.randn(rows, v, device=device)
    times = []
    with torch.inference_mode():  # as vLLM runs compute_logits
        for step in range(warmup + steps):
            t0 = time.perf_counter()
            runtime.on_compute_logits(hidden, logits)
            if step >= warmup:
                times.append(1e6 * (time.perf_counter() - t0))
            for out in outputs:  # every row sampled a token
                out.append(1)
    q = statistics.quantiles(times, n=4)
    return {"rows": rows, "strategy": strategy, "steps": steps, "us_median": q[1],
            "us_q1": q[0], "us_q3": q[2], "us_per_row_median": q[1] / rows}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="8,64,256")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--strategies", default="introllm,fixed")
    args = p.parse_args(argv)
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    out = [measure(int(n), args.steps, strategy=s) for s in args.strategies.split(",")
           for n in args.rows.split(",")]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
