"""Strategy comparison (launch.compare): the table from run folders, and a real two-run compare."""

from __future__ import annotations

import json

import pytest

from launch.compare import final_numbers, main, table, write_comparison
from tests.test_analyze_on_cpu import _write_run


def _fake_run(root, name, avg, seconds=100.0):
    d = root / name
    d.mkdir()
    _write_run(d, tampo=False)
    (d / "final_metrics.json").write_text(json.dumps({
        "seconds": seconds, "eval_base/all/avg@4": 0.30, "eval_base/all/pass@4": 0.6,
        "eval/all/avg@4": avg, "eval/all/pass@4": 0.62, "eval/all/pass@1": avg}))
    return d


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


@pytest.mark.slow
def test_compare_runs_two_strategies_and_reuses_finished_runs(tmp_path, tiny_model_dir, capsys):
    small = ["trainer.total_steps=2", "trainer.prompts_per_step=4", "rollout.group_size=4",
             "rollout.max_new_tokens=32", "data.train_size=200", "data.eval_size=20",
             "eval.samples=2", "rollout=hf", "cluster.dashboard=false", "reward.num_workers=1",
             f"model.path={tiny_model_dir}"]
    args = ["--seeds", "0", "--only", "fixed-1.0", "tampo", "--out", str(tmp_path), "--", *small]
    assert main(args) == 0
    md = (tmp_path / "comparison.md").read_text()
    assert "| fixed-1.0 | 1 |" in md and "| tampo | 1 |" in md
    assert (tmp_path / "tampo-s0" / "report.md").exists()
    capsys.readouterr()
    assert main(args) == 0  # everything done before: reused, not run again
    assert capsys.readouterr().out.count("done before, reused") == 2
