"""The fair comparison (launch.decoding): disjoint validation, matched pairs, the tuned rule that
never reads a test record, budgets, the final decoding sweep of the trainer and rollout worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.synthetic import generate, split_of
from launch import decoding
from launch.compare import sweep_decodings, sweep_overrides, write_comparison
from launch.config import ConfigError
from launch.metrics import write_problem_records
from tests.test_config_on_cpu import compose_run

TEMPS = ["t0.6", "t1"]
DECODINGS = ["own", *TEMPS]


def _sweep_run(root, name, scores: dict, n: int = 40, seconds: float = 60.0, phases=()):
    """A finished run's folder with sweep records: scores[(split, decoding)] = the fraction of
    its n problems answered right in all 4 samples (the others: none)."""
    d = root / name
    (d / "evals").mkdir(parents=True)
    for (split, dec), frac in scores.items():
        right = round(frac * n)
        write_problem_records(d / "evals" / f"step_000010_{split}_{dec}.jsonl",
                              [{"problem_id": f"{split}{i}", "correct": [float(i < right)] * 4,
                                "groups": []} for i in range(n)])
    rows = [{"step": 0}] + [
        {"step": s + 1, "reward/num_items": 16.0, "rollout/gen_tokens": 100.0,
         "timing_s/step": seconds / 6,
         **({"actor/optimizer_steps": 1.0} if p == "theta" else {"phi/optimizer_steps": 1.0})}
        for s, p in enumerate(phases or ["theta"] * 4)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "final_metrics.json").write_text(json.dumps({"seconds": seconds}))
    return d


def _scores(val: dict, test: dict) -> dict:
    return {**{("val", k): v for k, v in val.items()}, **{("test", k): v for k, v in test.items()}}


# ------------------------------------------------------------------------- splits


def test_validation_is_disjoint_from_test_and_train_whatever_the_seeds():
    got = {split: {p.prompt for s in range(3) for p in generate(300, split, seed=s)}
           for split in ("train", "val", "eval")}
    assert all(got.values())
    assert not got["val"] & got["eval"] and not got["val"] & got["train"]
    assert not got["train"] & got["eval"]
    assert all(split_of(p) == split for split, ps in got.items() for p in ps)
    val = generate(100, "val", seed=0)
    assert len({p.prompt for p in val}) == 100  # unique, like the test split


def test_a_validation_file_sharing_a_test_problem_is_refused(tmp_path):
    from launch.inputs import load_validation

    rows = [{"problem": f"What is {i}+1?", "answer": str(i + 1)} for i in range(5)]
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = compose_run("data=gsm8k", f"data.train_path={val}", f"data.val_path={val}",
                      "data.format=answer")
    others = generate(3, "eval")
    assert len(load_validation(run, others, others)) == 5
    from data.loaders import load_problems

    same = load_problems(str(val), "answer", 0.1)
    with pytest.raises(ConfigError, match="shares 5 problems with the held-out set"):
        load_validation(run, same, others)
    with pytest.raises(ConfigError, match="shares 5 problems with the training set"):
        load_validation(run, others, same)


# ------------------------------------------------------------------------- the rules


def test_matched_pairs_compare_the_same_problems_at_the_same_temperature(tmp_path):
    arm = {0: _sweep_run(tmp_path, "a-s0", _scores(
        {d: 0.5 for d in DECODINGS}, {"own": 0.9, "t0.6": 0.75, "t1": 0.25}))}
    base = {0: _sweep_run(tmp_path, "b-s0", _scores(
        {d: 0.5 for d in DECODINGS}, {"own": 0.1, "t0.6": 0.5, "t1": 0.5}))}
    runs = {"fixed-b": [base[0]], "arm": [arm[0]]}
    got = decoding.matched(runs, [0], "fixed-b", TEMPS, reps=200)["arm"]
    assert got["t0.6"]["avg"]["diff"] == pytest.approx(0.25)  # 0.75 - 0.5, not own's 0.9
    assert got["t1"]["avg"]["diff"] == pytest.approx(-0.25)
    assert set(got) == set(TEMPS)  # own is no matched temperature
    # other problems at one temperature: refused, never paired by position
    other = tmp_path / "c-s0" / "evals"
    _sweep_run(tmp_path, "c-s0", _scores({d: 0.5 for d in DECODINGS},
                                         {d: 0.5 for d in DECODINGS}))
    write_problem_records(other / "step_000010_test_t1.jsonl",
                          [{"problem_id": f"x{i}", "correct": [1.0] * 4, "groups": []}
                           for i in range(40)])
    with pytest.raises(ValueError, match="different held-out problems"):
        decoding.matched({"fixed-b": [base[0]], "c": [tmp_path / "c-s0"]}, [0], "fixed-b",
                         TEMPS, reps=10)


def test_the_tuned_choice_reads_validation_only(tmp_path, monkeypatch):
    """The arm is best on validation at t0.6 and best on test at t1: the choice is t0.6. Test
    records at every decoding but the chosen ones are then deleted, and the choice is remade
    with the test reader made to fail: nothing changes."""
    arm = _sweep_run(tmp_path, "a-s0", _scores({"own": 0.4, "t0.6": 0.7, "t1": 0.5},
                                               {"own": 0.3, "t0.6": 0.4, "t1": 0.9}))
    base = _sweep_run(tmp_path, "fixed-s0", _scores({"own": 0.6, "t0.6": 0.5, "t1": 0.2},
                                                    {"own": 0.5, "t0.6": 0.5, "t1": 0.5}))
    runs = {"fixed": [base], "arm": [arm]}
    got = decoding.tuned(runs, [0], "fixed", DECODINGS, reps=200)
    assert got["choice"]["arm"] == {"avg": "t0.6", "pass": "t0.6"}
    assert got["choice"]["fixed"]["avg"] == "own"
    assert got["test"]["arm"]["avg"] == pytest.approx(0.4)  # test at the choice, not its best
    assert got["paired"]["arm"]["avg"]["diff"] == pytest.approx(0.4 - 0.5)
    for d, dec in ((arm, "own"), (arm, "t1"), (base, "t0.6"), (base, "t1")):
        (d / "evals" / f"step_000010_test_{dec}.jsonl").unlink()
    real = decoding.sweep_records

    def val_only(run_dir, split, dec):
        if split == "test":
            raise AssertionError("the tuned choice opened a test record")
        return real(run_dir, split, dec)

    monkeypatch.setattr(decoding, "sweep_records", val_only)
    scores = {n: decoding.validation_scores(r, DECODINGS, "avg") for n, r in runs.items()}
    assert {n: decoding.tune(s) for n, s in scores.items()} == {"fixed": "own", "arm": "t0.6"}
    assert decoding.tuned_baseline(runs, DECODINGS) == "fixed"
    monkeypatch.setattr(decoding, "sweep_records", real)
    assert decoding.tuned(runs, [0], "fixed", DECODINGS, reps=50)["choice"] == got["choice"]


def test_tie_breaks_and_missing_validation_are_named():
    assert decoding.tune({"own": 0.5, "t0.6": 0.5, "t1": 0.4}) == "own"
    with pytest.raises(ValueError, match="no val records at own.*data.val_path"):
        decoding.validation_scores([Path("/nonexistent")], ["own"], "avg")


# ------------------------------------------------------------------------- budgets


def test_budgets_count_theta_and_phi_updates_responses_and_tokens(tmp_path):
    d = _sweep_run(tmp_path, "i-s0", {}, phases=["phi", "theta"] * 3, seconds=42.0)
    got = decoding.budget(d)
    assert got.pop("seconds") == pytest.approx(42.0)  # the steps' own, not the run's
    assert got == {"steps": 6.0, "theta_updates": 3.0, "phi_updates": 3.0, "responses": 96.0,
                   "tokens": 600.0, "theta_tokens": 300.0}


def test_equal_theta_updates_doubles_an_alternating_runs_steps():
    steps = decoding.steps_for_theta_updates
    assert steps(compose_run("+experiment=introllm"), 120) == 240  # phi first: odd steps θ
    assert steps(compose_run("+experiment=introllm", "meta.phi_first=false"), 3) == 5
    assert steps(compose_run("+experiment=introllm", "meta.phase_len=2"), 4) == 8
    assert steps(compose_run("+experiment=introllm", "meta.schedule=joint"), 120) == 120
    assert steps(compose_run("+experiment=tampo"), 120) == 120


def test_equal_theta_updates_runs_introllm_longer_in_its_own_folder():
    from launch.compare import DEFAULT_SET, budget_overrides

    intro = DEFAULT_SET["introllm"]
    run = compose_run(*intro.split())
    assert budget_overrides("introllm", intro, run, "responses") == (intro, "introllm")
    run = compose_run("trainer.total_steps=10", *intro.split())
    assert budget_overrides("introllm", intro, run, "theta-updates") == (
        f"{intro} trainer.total_steps=20", "introllm-steps20")
    fixed = DEFAULT_SET["fixed-0.8"]
    assert budget_overrides("fixed-0.8", fixed, compose_run(*fixed.split()),
                            "theta-updates") == (fixed, "fixed-0.8")


def test_sweep_overrides_name_the_decodings():
    sweep = sweep_overrides([0.6, 1.0], 250)
    assert sweep == ["eval.temperatures=[0.6,1]", "data.val_size=250"]
    assert sweep_decodings([0.6, 1.0]) == ["own", "t0.6", "t1"]
    assert sweep_overrides([], 250) == [] and sweep_decodings([]) == []


# ------------------------------------------------------------------------- the report


def test_the_comparison_reports_matched_tuned_and_budgets(tmp_path):
    val = {"own": 0.5, "t0.6": 0.6, "t1": 0.4}
    runs = {
        "fixed-0.6": [_sweep_run(tmp_path, f"f6-s{s}", _scores(val, {"own": 0.5, "t0.6": 0.5,
                                                                        "t1": 0.4}))
                      for s in (0, 1)],
        "fixed-1.0": [_sweep_run(tmp_path, f"f1-s{s}", _scores({d: 0.3 for d in DECODINGS},
                                                               {d: 0.9 for d in DECODINGS}))
                      for s in (0, 1)],
        "introllm": [_sweep_run(tmp_path, f"i-s{s}", _scores(val, {"own": 0.7, "t0.6": 0.6,
                                                                   "t1": 0.5}),
                                phases=["phi", "theta"] * 2) for s in (0, 1)],
    }
    for dirs in runs.values():
        for d in dirs:
            (d / "final_metrics.json").write_text(json.dumps({"seconds": 60.0,
                                                              "eval/all/avg@4": 0.5}))
    md = write_comparison(tmp_path, runs, [0, 1], reps=200, temperatures=TEMPS).read_text()
    data = json.loads((tmp_path / "comparison.json").read_text())
    # fixed-1.0 is best on test everywhere, but the baseline is chosen on validation
    assert data["baseline"] == "fixed-0.6"
    assert data["matched"]["introllm"]["t0.6"]["avg"]["diff"] == pytest.approx(0.1)
    assert data["tuned"]["choice"]["introllm"]["avg"] == "t0.6"
    assert "## Matched decoding" in md and "## Tuned decoding" in md and "## Budgets" in md
    # test Avg@k / Pass@k at own, t0.6, t1 (all k samples right or none: Avg@k = Pass@k)
    assert ("| introllm | 0.700 ± 0.000 / 0.700 ± 0.000 | 0.600 ± 0.000 / 0.600 ± 0.000 | "
            "0.500 ± 0.000 / 0.500 ± 0.000 |") in md
    assert "(confounded by decoding temperature)" in md
    assert "| introllm | 4 | 2 | 2 | 64 |" in md  # steps, θ updates, φ updates, responses
    assert (tmp_path / "decoding.png").stat().st_size > 5000


# ------------------------------------------------------------------------- the trainer's sweep


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class _Actor:
    def __init__(self, log):
        def generate_texts(reqs, step, seed, greedy):
            log.append(("generate", {r.base_tau for r in reqs}, len(reqs), seed))
            return [r"\boxed{1}"] * len(reqs)

        self.generate_texts = _Remote(generate_texts)
        self.set_decoding = _Remote(lambda mode=None, temperature=None: log.append(
            ("decode", mode, temperature)))
        self.score_texts = _Remote(lambda items: [1.0] * len(items))
        self.plan = _Remote(lambda step, n, for_eval=False, seed=None: log.append(
            ("plan", seed)) or [0.7] * n)


def test_the_trainer_sweeps_test_and_validation_at_each_temperature(monkeypatch, tmp_path):
    import ray

    from launch.trainer import Trainer

    monkeypatch.setattr(ray, "get", lambda refs: refs)
    run = compose_run("eval.samples=2", "eval.temperatures=[0.6,1.0]")
    heldout, val = generate(4, "eval"), generate(3, "val")
    trainer = Trainer(run, str(tmp_path), "unused", [], heldout, val)
    log: list = []
    trainer.heldout_ids, trainer.validation_ids = [[1]] * 4, [[1]] * 3
    trainer.rollout = [_Actor(log)]
    trainer.reward = trainer.meta = _Actor(log)
    got = trainer.sweep(120)
    assert {k for k in got if k.endswith("/all/avg@2")} == {
        f"sweep/{s}/{d}/all/avg@2" for s in ("test", "val") for d in ("own", "t0.6", "t1")}
    gens = [e for e in log if e[0] == "generate"]
    assert [(taus, n) for _, taus, n, _ in gens] == [
        ({0.6}, 8), ({1.0}, 8), ({0.7}, 8), ({0.6}, 6), ({1.0}, 6), ({0.7}, 6)]
    assert len({seed for *_, seed in gens}) == 1  # one sampling seed: arms pair at a τ
    decodes = [e[1:] for e in log if e[0] == "decode"]
    # own: the strategy's own rule; a temperature: every token at it; restored after each
    assert decodes[:6] == [("sample", 0.6), (None, None), ("sample", 1.0),
                           (None, None), ("sample", None), (None, None)]
    # own's plan: from the evaluation seed, not the meta actor's running RNG (reproducible
    # from a checkpoint)
    assert [e[1] for e in log if e[0] == "plan"] == [gens[0][3]] * 2
    for s in ("test", "val"):
        for d in ("own", "t0.6", "t1"):
            assert decoding.sweep_records(tmp_path, s, d)
    assert decoding.problem_records(tmp_path) is None  # sweep files are no evaluation's
    assert trainer.evaluate(120)  # the run's own rule: its own file
    assert len(decoding.problem_records(tmp_path)) == 4


def test_the_strategy_is_restored_when_a_decoding_fails(monkeypatch, tmp_path):
    import ray

    from launch.trainer import Trainer

    monkeypatch.setattr(ray, "get", lambda refs: refs)
    trainer = Trainer(compose_run("eval.temperatures=[0.6]"), str(tmp_path), "unused", [],
                      generate(2, "eval"))
    log: list = []
    trainer.heldout_ids, trainer.validation_ids = [[1]] * 2, []
    actor = _Actor(log)

    def broken(reqs, step, seed, greedy):
        raise RuntimeError("engine died")

    actor.generate_texts = _Remote(broken)
    trainer.rollout = [actor]
    trainer.reward = trainer.meta = _Actor(log)
    with pytest.raises(RuntimeError, match="engine died"):
        trainer.sweep(120)
    assert log == [("decode", "sample", 0.6), ("decode", None, None)]


def test_the_rollout_worker_decodes_at_a_fixed_temperature_and_back():
    from meta.introllm import IntroLLM
    from rollout.worker import RolloutWorker

    class Engine:
        def __init__(self, strategy):
            self.strategy, self.bound = strategy, []

        def set_strategy(self, strategy):
            self.strategy = strategy
            self.bound.append(strategy.spec())

    own = IntroLLM(16)
    worker = RolloutWorker.__new__(RolloutWorker)
    worker.engine, worker.strategy, worker.train_mode = Engine(own), own, "sample"
    worker.set_decoding("sample", 0.6)
    assert worker.engine.strategy.spec() == {"name": "fixed", "kwargs": {"temperature": 0.6}}
    worker.set_decoding("sample")
    assert worker.engine.strategy is own and len(worker.engine.bound) == 2
    worker.set_decoding("mean")
    assert worker.engine.strategy is own and own.spec()["kwargs"]["temperature_mode"] == "mean"
    worker.set_decoding()  # as it trains: the mode it was built with
    assert own.spec()["kwargs"]["temperature_mode"] == "sample"
