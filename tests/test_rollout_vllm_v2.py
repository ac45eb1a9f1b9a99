"""vLLM's model runner V2 on CPU: the engine's invariant suite, in both V2 shapes.

``tests/test_rollout_vllm.py`` (τ counts under early stops, chunked prefill and preemption;
log-probs and head records against a transformers recompute; θ and φ weight syncs; seeded
reproducibility) runs again, together with ``tests/test_rollout_engines_agree.py`` (both engines
sample with the same head), with the engine core in its own process (``v2-process``, vLLM's
default shape on GPU); with the engine core in-process (``v2-inproc``) its learned-head and
weight-sync-path tests run (the rest of what differs between the engine-core shapes is tested
under runner V1). Each runs in a fresh interpreter: V2 refuses to start without a Triton CPU
backend, and the test stub that stands in for one (``tests/triton_stub``, never used by the
product) must be in place before vLLM is first imported, in every process vLLM spawns too.
Triton's kernels then run in Triton's interpreter: correct, and slow, so these are correctness
checks, not speed figures, and kept small: one strategy of each kind, the sync tests on the
default (collective) path, and the engine-lifecycle tests (own folders, other architectures, a
dying engine core: they pin runner V1) only in the V1 suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


# (shape, test files, a -k selection or None: all but V1_ONLY, the tests that must pass)
V2_RUNS = {
    # vLLM's default shape on GPU: the whole engine suite, and the engines agree
    "v2-process": (["tests/test_rollout_vllm.py", "tests/test_rollout_engines_agree.py"], None,
                   17),
    # the engine core in-process differs from it only where V1's shapes already test: the learned
    # head's records and both weight-sync paths
    "v2-inproc": (["tests/test_rollout_vllm.py"], "introllm or both_sync_paths", 2),
}
V1_ONLY = ("other_architectures", "folder_with_head_weights", "engine_core_that_dies")


@pytest.mark.parametrize("shape", sorted(V2_RUNS))
def test_the_engine_invariant_suite_passes_under_model_runner_v2(shape):
    files, select, want = V2_RUNS[shape]
    stub = str(ROOT / "tests" / "triton_stub")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEMPO_TEST_TRITON_CPU_STUB": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (stub, os.environ.get("PYTHONPATH")) if p),
           "TEMPO_TEST_VLLM_SHAPES": shape,
           # one strategy of each kind: per-request tau, per-token from logits, the learned head
           "TEMPO_TEST_VLLM_STRATEGIES": "fixed,edt,introllm",
           "TEMPO_TEST_SYNC_PATHS": "collective"}  # the default path (both: one test below)
    select = select or " and ".join(f"not {name}" for name in V1_ONLY)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow",
           "-k", select, *files]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    # (the engine raises if vLLM runs another runner than the shape's runner=v2 asks for)
    assert "skipped" not in summary and passed == want, summary
