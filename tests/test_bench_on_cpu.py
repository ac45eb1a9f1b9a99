"""launch.bench: the shared timing helpers (launch.bench.harness, hand-checked), tiny real runs
of every benchmark through the command line (launch.bench.__main__), and its --help."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from launch.bench.__main__ import SUBCOMMANDS, main
from launch.bench.harness import Arm, Table, compare, interleaved, quantile, schedule, summarize
from launch.bench.rollout import head_cost_note

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- helpers


def test_schedule_interleaves_and_balances():
    assert schedule(["A", "B"], 3, balance=False) == [(0, "A"), (0, "B"), (1, "A"), (1, "B"),
                                                      (2, "A"), (2, "B")]
    # balanced: odd rounds reversed (A B C, C B A, A B C)
    assert [n for _, n in schedule(["A", "B", "C"], 3)] == list("ABCCBAABC")


def test_interleaved_runs_setup_then_run_and_drops_the_warmup():
    calls = []
    t = iter(range(1000))  # a fake clock: each reading is 1 s after the previous one

    def arm(name, tokens):
        return Arm(name, run=lambda r: calls.append(("run", name, r)) or {"tokens": tokens},
                   setup=lambda: calls.append(("setup", name)))

    cpu = iter(range(0, 1000, 2))  # CPU time advances 2 s per reading
    out = interleaved([arm("A", 10), arm("B", 30)], reps=2, warmup=1, clock=lambda: next(t),
                      cpu_clock=lambda: next(cpu))
    assert calls == [("setup", "A"), ("run", "A", 0), ("setup", "B"), ("run", "B", 0),  # warm-up
                     ("setup", "B"), ("run", "B", 1), ("setup", "A"), ("run", "A", 1),
                     ("setup", "A"), ("run", "A", 2), ("setup", "B"), ("run", "B", 2)]
    assert [s["round"] for s in out["A"]] == [0, 1]  # the warm-up round is not kept
    assert all(s["seconds"] == 1 and s["cpu_seconds"] == 2 for s in out["A"] + out["B"])
    assert [s["tokens"] for s in out["B"]] == [30, 30]


def test_interleaved_rejects_bad_arguments():
    with pytest.raises(ValueError, match="reps"):
        interleaved([Arm("A", lambda r: {})], reps=0)
    with pytest.raises(ValueError, match="unique"):
        interleaved([Arm("A", lambda r: {}), Arm("A", lambda r: {})], reps=1)


def test_summary_arithmetic():
    # sorted [1, 2, 4, 10]: median at position 1.5 -> (2 + 4) / 2 = 3;
    # q1 at 0.75 -> 1 + 0.75 * (2 - 1) = 1.75; q3 at 2.25 -> 4 + 0.25 * (10 - 4) = 5.5
    s = summarize([10, 2, 1, 4])
    assert (s.n, s.median, s.min, s.max, s.q1, s.q3) == (4, 3.0, 1.0, 10.0, 1.75, 5.5)
    assert s.iqr == 3.75
    assert summarize([7]).as_dict() == {"n": 1, "median": 7.0, "min": 7.0, "max": 7.0,
                                        "q1": 7.0, "q3": 7.0}
    assert quantile([0.0, 10.0, 20.0], 0.5) == 10.0
    with pytest.raises(ValueError):
        summarize([])


def test_compare_pairs_rounds():
    # tokens/s: A = [100, 90, 110], B = [100, 100, 100] -> paired ratios [1.0, 0.9, 1.1]
    # per CPU second: A = [100, 90, 110] / 0.5, B = 200 / 4 = 50 -> paired max 220 / 50 = 4.4
    a = [{"tokens": t, "seconds": 1.0, "cpu": 0.5} for t in (100, 90, 110)]
    b = [{"tokens": 200, "seconds": 2.0, "cpu": 4.0}] * 3
    r = compare(a, b)
    assert r["ratio_of_medians"] == pytest.approx(1.0)
    assert compare(a, b, per="cpu")["paired"]["max"] == pytest.approx(1.1 * 4)
    assert r["paired"]["median"] == pytest.approx(1.0)
    assert (r["paired"]["min"], r["paired"]["max"]) == pytest.approx((0.9, 1.1))


def test_head_cost_note_judges_the_paired_ratios():
    # cost = 100 * (1 - ratio): median 0.97 -> +3.0 %; best round 1.10 -> -10 %, worst 0.95 -> +5 %
    assert head_cost_note({"median": 0.97, "min": 0.95, "max": 1.10}) == \
        "head costs +3.0 % (target <= 2 %: missed at the median, rounds -10.0 to +5.0 %)"
    assert head_cost_note({"median": 0.995, "min": 0.99, "max": 1.0}).endswith(
        "met in every round)")
    assert head_cost_note({"median": 0.9, "min": 0.85, "max": 0.95}).endswith(
        "missed in every round)")


def test_table_aligns_numbers_right_and_text_left():
    t = Table(["arm", "tok/s", "range"], title="t").add("vllm:fixed", "5,880", "5,000 - 6,000")
    t.add("hf", "412", "400 - 420")
    lines = str(t).splitlines()
    assert lines[0] == "t"
    assert lines[1].split() == ["arm", "tok/s", "range"]
    assert lines[3] == "vllm:fixed  5,880  5,000 - 6,000"
    assert lines[4] == "hf            412      400 - 420"
    with pytest.raises(ValueError, match="2 cells"):
        t.add("x", "1")


def test_help_lists_every_benchmark_and_each_has_its_own(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m launch.bench")
    names = ("rollout", "learner", "trl", "pipeline", "sync", "gpu")
    assert len(SUBCOMMANDS) == len(names) and all(name in text for name in names)
    for name in names:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert f"python -m launch.bench {name}" in capsys.readouterr().out


def test_unknown_engine_is_refused():
    with pytest.raises(SystemExit, match="--engines"):
        main(["rollout", "--engines", "trt"])


# ----------------------------------------------------------------------------- real runs

SMALL = ["--reps", "2", "--warmup", "1", "--prompts", "4", "--group", "2", "--max-new-tokens", "8"]


def _check_run(result, out, engines, capsys):
    text = capsys.readouterr().out
    arms = {f"{e}:{s}" for e in engines for s in ("introllm", "fixed")}
    assert set(result["arms"]) == arms
    for name, arm in result["arms"].items():
        assert len(arm["samples"]) == 2 and arm["tok_s"]["min"] > 0
        assert all(s["tokens"] > 0 and s["cpu_seconds"] > 0 for s in arm["samples"])
        assert arm["tok_cpu_s"]["min"] > 0
        assert any(line.startswith(name + " ") for line in text.splitlines())  # its table row
    for e in engines:
        assert f"{e}: introllm / fixed" in result["ratios"]
        for clock in ("wall", "cpu"):
            assert result["ratios"][f"{e}: introllm / fixed"][clock]["ratio_of_medians"] > 0
    assert "tokens/s per arm" in text and "machine:" in text and "settings:" in text
    saved = json.loads(out.read_text())
    assert saved["settings"]["responses"] == 8 and set(saved["arms"]) == arms


def test_rollout_benchmark_hf(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = main(["rollout", "--engines", "hf", "--model", str(tiny_model_dir), *SMALL,
                   "--out", str(out)])
    _check_run(result, out, ["hf"], capsys)
    # the head's select does real work; the fixed strategy's is a copy of base tau
    samples = result["arms"]["hf:introllm"]["samples"]
    assert all(s["select_s"] > 0 and 0.5 <= s["mean_tau"] <= 1.5 for s in samples)


def test_rollout_benchmark_puts_a_baseline_trees_arms_and_host_steps_beside_this_trees(
        tiny_model_dir, tmp_path, capsys):
    """--baseline runs the same arms and host-step figures over another tree in a child process
    (here this very tree, as a folder: what a git worktree of REF would be)."""
    result = main(["rollout", "--engines", "hf", "--model", str(tiny_model_dir), *SMALL,
                   "--host-rows", "8,32", "--baseline", str(ROOT)])
    text = capsys.readouterr().out
    assert set(result["arms"]) == {"hf:introllm", "hf:fixed", "hf:introllm@base",
                                   "hf:fixed@base"}
    assert all(s["tokens"] > 0 and s["cpu_seconds"] > 0  # the child's own clocks
               for s in result["arms"]["hf:fixed@base"]["samples"])
    assert {"hf: introllm / fixed @base", "hf:introllm: this / @base"} <= set(result["ratios"])
    for side in ("this", "base"):
        got = {(h["strategy"], h["rows"]) for h in result["host_step"][side]}
        assert got == {(s, n) for s in ("introllm", "fixed") for n in (8, 32)}
        assert all(h["us_median"] > 0 for h in result["host_step"][side])
    assert "host microseconds" in text and "@base us/step" in text


def test_a_baseline_ref_is_checked_out_as_a_temporary_worktree(tmp_path):
    import subprocess

    from launch.bench import baseline

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f.txt").write_text("one")
    subprocess.run([*git, "-C", str(repo), "add", "f.txt"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "one"], check=True)
    (repo / "f.txt").write_text("two")  # the working copy moved on; the worktree has the commit
    old_root, baseline.ROOT = baseline.ROOT, repo
    try:
        with baseline.worktree("HEAD") as (tree, sha):
            assert (tree / "f.txt").read_text() == "one" and len(sha) == 40
        assert not tree.exists()
        with pytest.raises(SystemExit, match="is not a commit"):
            with baseline.worktree("no-such-ref"):
                pass
    finally:
        baseline.ROOT = old_root


@pytest.mark.slow  # starts vLLM
def test_rollout_benchmark_vllm_shapes_and_hf(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    engines = ["vllm", "vllm-process", "hf"]
    result = main(["rollout", "--engines", ",".join(engines), "--model", str(tiny_model_dir),
                   *SMALL, "--out", str(out)])
    _check_run(result, out, engines, capsys)
    assert {"introllm: vllm / hf", "fixed: vllm / hf", "introllm: vllm-process / vllm",
            "fixed: vllm-process / vllm"} <= set(result["ratios"])
    # select is timed where it runs: in the engine-core process for vllm-process
    assert all(s["select_s"] > 0 for s in result["arms"]["vllm-process:introllm"]["samples"])


def test_learner_benchmark_times_every_arm_and_reports_the_ratios(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "learner.json"
    result = main(["learner", "--model", str(tiny_model_dir), "--prompts", "4", "--group", "2",
                   "--max-new-tokens", "8", "--candidates", "3", "--reps", "2", "--warmup", "0",
                   "--out", str(out)])
    text = capsys.readouterr().out
    assert set(result["median_seconds"]) == {"theta step", "theta step, separate old pass",
                                             "phi step", "old logp", "old logp + l_k"}
    assert all(len(v) == 2 for v in result["samples"].values())
    assert 0 < result["ratios"]["phi step / theta step"]
    assert "TAMPO l_k (K=3) / theta step" in text and "phi step / theta step" in text
    assert "one pass / separate old pass" in text
    assert json.loads(out.read_text())["settings"]["responses"] == 8


@pytest.mark.slow
def test_trl_benchmark_runs_both_sides_step_for_step(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "trl.json"
    result = main(["trl", "--prompts", "2", "--group", "2", "--max-new-tokens", "8",
                   "--micro-batch-size", "4", "--reps", "2", "--warmup", "1",
                   "--set", "rollout=hf", "--set", f"model.path={tiny_model_dir}",
                   "--out", str(out)])
    text = capsys.readouterr().out
    assert "TRL / ours" in text and "seconds per GRPO step" in text
    # both sides made warmup + reps optimizer steps, on 2 x 2 responses of <= 8 tokens each
    assert result["steps"] == {"ours": 3, "trl": 3}
    for side in ("ours", "TRL GRPOTrainer"):
        assert len(result["samples"][side]) == 2
        assert all(0 < s["tokens"] <= 32 and s["gen_s"] > 0 for s in result["samples"][side])
    assert result["ratios"]["trl / ours"] > 0
    settings = json.loads(out.read_text())["settings"]
    assert settings["our_engine"] == "hf"
    assert settings["our_skip_zero_adv"] is False  # every response reaches our learner, as TRL's


def test_gpu_benchmark_script_runs_on_cpu_with_tiny_shapes(capsys):
    """The GPU script's code path (CI has no GPU): tiny Qwen2 shapes, every section filled."""
    result = main(["gpu", "--tiny", "--batch", "2", "--seq", "32", "--decode-batch", "4",
                   "--decode-context", "16", "--reps", "2", "--warmup", "1"])
    text = capsys.readouterr().out
    assert "theta MFU" in text and "TAMPO l_k" in text
    for size in ("0.5b", "1.5b"):
        r = result["sizes"][size]
        assert r["theta"]["tokens_per_s"] > 0 and r["phi"]["tokens_per_s"] > 0
        assert r["theta"]["mfu"] is None  # no peak known for a CPU
        assert r["decode"]["s_fixed"] > 0 and r["decode"]["s_head"] > 0
        err = r["bf16_error"]
        # bf16 logits differ from fp32 ones (the check has teeth), fp32 maths keeps it small
        assert 0 < err["bf16_logits_fp32_math"]["max_abs"] < 0.1
        assert err["bf16_logits_fp32_math"]["mean_abs"] <= err["all_bf16"]["mean_abs"]
    lk = result["tampo_lk"]
    assert lk["torch_chunked"]["fraction_of_theta_step"] > 0 and "one_pass" not in lk  # CUDA only


def test_gpu_benchmark_refuses_real_sizes_without_a_gpu():
    with pytest.raises(SystemExit, match="--tiny"):
        main(["gpu", "--sizes", "0.5b"])


@pytest.mark.slow  # Ray, 2 DeepSpeed ranks, vLLM with its engine core and 2 TP workers
def test_sync_benchmark_moves_no_weight_through_the_object_store_on_the_collective_path(tmp_path,
                                                                                         capsys):
    out = tmp_path / "sync.json"
    result = main(["sync", "--sizes", "tiny", "--reps", "1", "--out", str(out)])
    text = capsys.readouterr().out
    tiny = result["sizes"]["tiny"]
    assert set(tiny["syncs"]) == {"collective", "object_store"}
    collective, store = tiny["syncs"]["collective"][0], tiny["syncs"]["object_store"][0]
    assert collective["object_store_bytes"] == 0  # Ray's own counter did not move
    assert store["object_store_bytes"] >= 2 * tiny["model_bytes"]  # both ranks' state dicts
    assert "one theta sync" in text and json.loads(out.read_text())["benchmark"] == "sync"


@pytest.mark.slow  # two DeepSpeed ranks spawned per phase
def test_learner_memory_benchmark_runs_a_setting_and_its_resume(tmp_path, capsys):
    out = tmp_path / "mem.json"
    result = main(["learner", "--memory", "--sizes", "tiny", "--settings", "zero3+gc",
                   "--tokens", "16", "--out", str(out)])
    run = result["sizes"]["tiny"]["this"]["zero3+gc"]
    assert [r["rank"] for r in run["ranks"]] == [0, 1] == [r["rank"] for r in run["resumed"]]
    for r in run["ranks"]:
        assert r["startup_peak"] > 0 and r["step_peak"] > 0 and r["save_peak"] > 0
        assert math.isfinite(r["loss"]) and r["step_s"] > 0  # a real theta step
    assert run["save_s"] > 0 and run["resume_s"] > 0
    assert run["checkpoint_bytes"] > result["sizes"]["tiny"]["model_bytes"]  # model/ + shards
    assert "per rank (max over 2 ranks)" in capsys.readouterr().out and out.exists()
