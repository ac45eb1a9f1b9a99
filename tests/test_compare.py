"""Strategy comparison (launch.compare): the table from run folders, and a real two-run compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.compare import final_numbers, main, table, write_comparison
from launch.metrics import write_problem_records
from tests.test_analyze_on_cpu import _write_run

ROOT = Path(__file__).resolve().parents[1]


def _fake_run(root, name, avg, seconds=100.0, correct=None, base=None):
    """A finished run's folder; `correct`: per-problem rewards of its last evaluation (k = 4),
    written as the trainer writes them (and the greedy column: the first of the 4); `base`:
    those of its first (step 0), the base model's."""
    d = root / name
    d.mkdir()
    _write_run(d, tampo=False)
    (d / "final_metrics.json").write_text(json.dumps({
        "seconds": seconds, "eval_base/all/avg@4": 0.30, "eval_base/all/pass@4": 0.6,
        "eval/all/avg@4": avg, "eval/all/pass@4": 0.62, "eval/all/pass@1": avg}))
    for step, rewards in ((0, base), (10, correct)):
        for tag, k in (("", 4), ("_greedy", 1)):
            if rewards is not None:
                write_problem_records(d / "evals" / f"step_{step:06d}{tag}.jsonl",
                                      [{"problem_id": f"p{i}", "correct": c[:k], "groups": []}
                                       for i, c in enumerate(rewards)])
    return d


def test_paired_differences_against_the_best_fixed_temperature(tmp_path):
    """Two seeds x 50 problems: 'hot' is better than fixed-1.0 on 20 problems of each seed, 'same'
    equals it; the baseline is the better of the two fixed temperatures."""
    base = [[1.0, 0.0, 0.0, 0.0]] * 25 + [[0.0] * 4] * 25
    better = [[1.0] * 4] * 20 + base[20:]
    runs = {name: [_fake_run(tmp_path, f"{name}-s{s}", avg, correct=c, base=base) for s in (0, 1)]
            for name, avg, c in (("fixed-1.0", 0.125, base), ("fixed-0.5", 0.1, base),
                                 ("hot", 0.5, better), ("same", 0.125, base))}
    md = write_comparison(tmp_path, runs, seeds=[0, 1], reps=2000).read_text()
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["baseline"] == "fixed-1.0"
    hot, same = data["paired"]["hot"], data["paired"]["same"]
    assert hot["avg"]["diff"] == pytest.approx((20 * 1.0 - 20 * 0.25) / 50)
    assert hot["pass"]["diff"] == pytest.approx(20 / 50 - 20 / 50)  # pass: both pass p0..p19
    assert not hot["avg"]["covers_zero"] and hot["avg"]["lo"] > 0
    assert same["avg"]["diff"] == same["avg"]["lo"] == same["avg"]["hi"] == 0.0
    assert "Paired differences to **fixed-1.0**" in md and "| hot | +0.300 [" in md
    paired_part = md.split("Paired differences")[1]
    assert "] *" in paired_part.split("| hot |")[1].split("\n")[0]  # its interval excludes 0
    assert "] *" not in paired_part.split("| same |")[1].split("\n")[0]
    assert "Smallest difference these sizes detect" in md
    trained = data["trained"]  # each run's last evaluation minus its own first (the base model)
    assert trained["hot"]["avg"]["diff"] == pytest.approx(0.3) and trained["hot"]["avg"]["lo"] > 0
    assert trained["hot"]["greedy"]["diff"] == 0.0  # p0..p19 were right greedily before
    assert trained["fixed-1.0"]["avg"]["diff"] == 0.0  # the baseline is paired with its base too
    assert "| hot | +0.300 [" in md.split("## What training changed")[1].split("##")[0]


def test_a_baseline_outside_the_comparison_is_refused(tmp_path):
    runs = {"a": [_fake_run(tmp_path, "a-s0", 0.4)]}
    with pytest.raises(ValueError, match="--baseline 'nope' is not one of"):
        write_comparison(tmp_path, runs, baseline="nope")


def test_table_is_mean_and_std_over_seeds(tmp_path):
    runs = {"a": [_fake_run(tmp_path, "a-s0", 0.40), _fake_run(tmp_path, "a-s1", 0.44)],
            "b": [_fake_run(tmp_path, "b-s0", 0.35, 50.0)]}
    assert final_numbers(runs["a"][0]) == {"seconds": 100.0, "base/avg@4": 0.30, "base/pass@4": 0.6,
                                           "final/avg@4": 0.40, "final/pass@4": 0.62}
    text = table({k: [final_numbers(d) for d in v] for k, v in runs.items()})
    # std over seeds is the sample std: |0.40 - 0.44| / sqrt(2) = 0.028
    assert "| a | 2 | 0.420 ± 0.028 | 0.620 ± 0.000 | 0.300 ± 0.000 | 0.600 ± 0.000 | 100 |" in text
    assert "| b | 1 | 0.350 ± 0.000 |" in text
    md = write_comparison(tmp_path, runs).read_text()
    assert "![comparison](comparison.png)" in md
    assert (tmp_path / "comparison.png").stat().st_size > 5000


def test_bad_set_and_only_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--set", "nameonly"])
    assert "must be NAME=OVERRIDES" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--only", "nope"])
    assert "not in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--val-size", "0"])
    assert "--val-size (0) must be >= 1 with --eval-temperatures" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # before any run: local files bring their own validation
        main(["--only", "fixed-1.0", "--", "data=gsm8k", "data.train_path=/data/train.jsonl"])
    assert "data.source=jsonl has no validation problems" in capsys.readouterr().err
    for bad, rule in (("cold=+experiment=fixed,meta.temperature=0.6", "mismatched input"),
                      ("cold=+experiment=fixed meta.temprature=0.6", "temprature"),
                      ("cold=+experiment=fixed 'meta.temperature=0.6", "quotation")):
        with pytest.raises(SystemExit):  # every arm is composed before the first run
            main(["--set", "hot=+experiment=fixed meta.temperature=1.4", "--set", bad])
        err = capsys.readouterr().err
        assert "strategy 'cold'" in err and "does not compose" in err and rule in err, err


@pytest.mark.slow
def test_compare_runs_two_strategies_and_reuses_finished_runs(tmp_path, capsys):
    from launch.build_model import TinyModelSpec, build
    from tests.test_pinned_run import PIN_SPEC_KW

    # a tiny model that writes \boxed{} answers (~10 s), so that records differ when draws do
    tiny_model_dir = build(TinyModelSpec(**PIN_SPEC_KW), tmp_path / "model")
    small = ["trainer.total_steps=2", "trainer.prompts_per_step=4", "rollout.group_size=4",
             "rollout.max_new_tokens=32", "data.train_size=200", "data.eval_size=20",
             "eval.samples=2", "rollout=hf", "cluster.dashboard=false", "reward.num_workers=1",
             f"model.path={tiny_model_dir}"]
    args = ["--seeds", "0", "--only", "fixed-1.0", "tampo", "--out", str(tmp_path),
            "--eval-temperatures", "0.7", "1.0", "--val-size", "6", "--", *small]
    assert main(args) == 0
    md = (tmp_path / "comparison.md").read_text()
    assert "| fixed-1.0 | 1 |" in md and "| tampo | 1 |" in md
    assert "| tampo | " in md.split("Paired differences to **fixed-1.0**")[1]  # from real runs
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["paired"]["tampo"]["greedy"]
    assert set(data["matched"]["tampo"]) == {"t0.7", "t1"} and data["tuned"]["choice"]["tampo"]
    assert "## Matched decoding" in md and "## Tuned decoding" in md
    assert data["budgets"]["tampo"][0]["theta_updates"] == 2.0
    assert (tmp_path / "tampo-s0" / "report.md").exists()
    # the sweep of a run done before it: added from its last checkpoint by launch.evaluate,
    # the same records as the run's own final sweep (same weights, same sampling seed)
    evals = tmp_path / "tampo-s0" / "evals"
    swept = {p.name: p.read_text() for p in evals.glob("step_*_*_*.jsonl")}
    assert len(swept) == 6  # test and validation x own, 0.7, 1.0
    answers = {a for text in swept.values() for line in text.splitlines()
               for a in json.loads(line)["answers"]}
    assert len(answers) > 3  # real answers differ: identical records below mean the same draws
    for name in swept:
        (evals / name).unlink()
    capsys.readouterr()
    assert main(args) == 0  # everything done before: reused, not run again
    out = capsys.readouterr().out
    assert out.count("done before, reused") == 2 and out.count("launch.evaluate") == 1
    again = tmp_path / "tampo-s0" / "sweep" / "evals"
    assert {p.name: p.read_text() for p in again.glob("step_*_*_*.jsonl")} == swept
    # a checkpoint is its own model folder: with model.path=null launch.evaluate takes it
    # rather than building the embedded model (which would take minutes, into an empty cache)
    cache = tmp_path / "cache"
    small_null = [o for o in small if not o.startswith("model.path=")]
    proc = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", *small_null, "+experiment=tampo", "seed=0",
         f"eval.checkpoint={tmp_path / 'tampo-s0'}", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "TEMPO_CACHE": str(cache)},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    got = json.loads((tmp_path / "eval" / "eval_results.json").read_text())
    assert got["model"].endswith("step_000002/model") and not cache.exists()
