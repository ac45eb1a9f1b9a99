"""Scale work must not change learning: a seeded smoke run's per-step numbers are pinned.

One run through the real entry point, in the shape the scale work touches: vLLM engine, two
learner ranks under ZeRO-3, IntroLLM (phi and theta phases, so both weight syncs, through the
default collective path), on a tiny
model trained just enough to write ``\\boxed{}`` answers, with the format reward on so that
groups disagree and every step updates. Every logged number that is not a wall-clock time
(rewards, lengths, tau statistics, losses, gradient norms, log-prob differences, the held-out
evaluations) must equal ``tests/pinned/smoke_zero3.json`` exactly.

A change that alters learning fails here with the first differing values. A change meant to
alter learning regenerates the file, and says why in its commit:

    TEMPO_UPDATE_PINNED=1 .venv/bin/python -m pytest tests/test_pinned_run.py

The numbers are those of this project's CPU machines (x86-64, the pinned torch / vLLM /
DeepSpeed of setup.cfg): floating-point results are bitwise repeatable there (checked: two runs
agree in every value), not across other CPUs or library versions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import QUICK_SPEC_KW
from tests.test_e2e_smoke import check_sane_run, run_smoke

pytestmark = pytest.mark.slow

PINNED = Path(__file__).parent / "pinned" / "smoke_zero3.json"
UPDATE_ENV = "TEMPO_UPDATE_PINNED"
# a tiny model that writes \boxed{} answers on arithmetic level 1 (~10 s to build)
PIN_SPEC_KW = {**QUICK_SPEC_KW, "sft_examples": 4000, "sft_steps": 300, "batch_size": 16}
RUN = ("learner.num_ranks=2", "learner.zero_stage=3", "trainer.total_steps=4",
       "data.levels=[1]", "data.families=[arith]", "reward.format_weight=0.5",
       "wandb.mode=disabled", "eval.temperatures=[0.7]", "data.val_size=8")
VOLATILE = ("timing_s/", "perf/", "rollout/gen_s", "reward/wall_s")
"""measured, not reproduced: wall-clock times and what derives from them"""


@pytest.fixture(scope="module")
def pin_model_dir(tmp_path_factory):
    from launch.build_model import TinyModelSpec, build

    return build(TinyModelSpec(**PIN_SPEC_KW), tmp_path_factory.mktemp("pin-model"))


def pinned_rows(rows: list[dict]) -> dict[str, dict]:
    """Every logged row by step, without the wall-clock figures."""
    return {str(r["step"]): {k: v for k, v in sorted(r.items()) if not k.startswith(VOLATILE)}
            for r in rows}


def differences(want: dict, got: dict) -> list[str]:
    out = []
    for step in sorted(set(want) | set(got), key=int):
        a, b = want.get(step, {}), got.get(step, {})
        out += [f"step {step} {k}: pinned {a.get(k, '(absent)')!r}, got {b.get(k, '(absent)')!r}"
                for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return out


def test_a_seeded_run_repeats_the_pinned_numbers_bit_for_bit(tmp_path, pin_model_dir):
    proc, rows = run_smoke(tmp_path, pin_model_dir, *RUN)
    assert "weight sync: collective (tempo_gloo" in proc.stdout  # vLLM's weight-transfer API
    check_sane_run(tmp_path, rows, RUN, steps=4)  # also IntroLLM's smoke run on vLLM
    got = pinned_rows(rows)
    assert [int(s) for s in got] == [0, 1, 2, 3, 4]
    assert all(got[s]["critic/score/mean"] > 0 for s in "1234")  # rewards vary: real updates
    assert all(got[s].get("actor/grad_norm", got[s].get("phi/grad_norm")) > 0 for s in "1234")
    # the final sweep on vLLM: every token at 0.7 (the head set aside), then IntroLLM's own
    # policy again, which decodes as the eval/ rule does (tau_0 = 1.0, the same sampling seed)
    last = got["4"]
    for m in ("avg@2", "pass@2", "maj@2"):
        assert last[f"sweep/test/own/all/{m}"] == last[f"eval/all/{m}"]
    assert last["sweep/val/t0.7/all/n"] == 8 and "sweep/test/t0.7/all/avg@2" in last
    if os.environ.get(UPDATE_ENV) == "1":
        PINNED.parent.mkdir(exist_ok=True)
        PINNED.write_text(json.dumps({"run": list(RUN), "model": PIN_SPEC_KW, "steps": got},
                                     indent=1) + "\n")
    pinned = json.loads(PINNED.read_text())
    assert pinned["run"] == list(RUN) and pinned["model"] == PIN_SPEC_KW, (
        f"{PINNED} was written for another run; regenerate it with {UPDATE_ENV}=1")
    diff = differences(pinned["steps"], got)
    assert not diff, (f"{len(diff)} logged values differ from {PINNED.name} (a change altered "
                      f"learning; if meant, regenerate with {UPDATE_ENV}=1):\n"
                      + "\n".join(diff[:20]))
