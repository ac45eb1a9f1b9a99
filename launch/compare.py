"""Compare temperature strategies over seeds: one command, paired differences against a
baseline with intervals, a markdown table, a JSON of every number, plots side by side.

    python -m launch.compare                                    # the default set x seeds 0 1 2
    python -m launch.compare --seeds 0 1 --only fixed-1.0 introllm --out runs/compare
    python -m launch.compare --baseline fixed-1.0 --eval-size 1000 --eval-samples 8
    python -m launch.compare --set "mine=+experiment=introllm meta.tau_max=2.0" \\
        -- trainer.total_steps=60
    python -m launch.compare --only fixed-0.8 introllm --equal theta-updates \\
        --eval-temperatures 0.6 0.8 1.0 --val-size 250

Each (strategy, seed) is a full ``python -m launch.run`` in its own folder ``OUT/<name>-s<seed>``,
one after another (each run uses the whole machine). A run whose folder already holds
``final_metrics.json`` is not run again, so an interrupted comparison continues where it stopped.

Every run also decodes its final model at each ``--eval-temperatures`` (default 0.6 0.8 1.0; every
token at that temperature, whatever the strategy) and under its own policy, on the held-out test
problems and on ``--val-size`` validation problems from a split disjoint from test and train
(``Trainer.sweep``; a reused run without it gets it from ``launch.evaluate``). ``OUT/comparison.md``
then has, against a baseline (``--baseline``; default: the fixed temperature with the best
validation Avg@k at its best decoding, chosen without a test record):

- **matched decoding**: each strategy minus the baseline at the same decoding temperature;
- **tuned decoding**: each strategy at its best decoding per metric, chosen on validation alone,
  minus the baseline at its own (``launch.decoding``);
- **budgets**: θ and φ updates, responses, tokens, steps' seconds per run; ``--equal theta-updates``
  runs strategies that update θ in only some steps (IntroLLM alternating) for more steps;
- **each run's evaluation rule** (``eval.temperature``; greedy), the older tables: mean ± std
  over seeds of the last evaluation's Avg@k, Pass@k and greedy accuracy, and the base model's,
  and the paired differences; confounded by decoding temperature when arms decode differently.

Paired: runs of one seed share the prompt order and the held-out problems, so every difference
is taken problem by problem and its 95 % interval comes from a paired bootstrap over problems
and seeds (``launch.paired``), with the smallest difference these seeds and problems can detect.
``OUT/comparison.json`` holds every number; ``OUT/comparison.png`` the held-out accuracy and mean τ
over steps, ``OUT/decoding.png`` test Avg@k and Pass@k against decoding τ, one line per strategy.
Seeds change the data order, the held-out problems, the strategy's draws and the sampling, so a
comparison is repeatable on the same machine.

The ``random-reward`` row is the random-reward control: fixed T = 1.0 trained on coin flips with
the batch's verifier mean instead of the verifier's rewards (``reward.random_control``): what a
strategy gains beyond it is what the verifier adds.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from launch.analyze import markdown_table, mean_std
from launch.decoding import has_sweep
from launch.metrics import decoding_name

# name -> launch.run overrides. TAMPO's paper compares fixed 0.9, 1.2, 1.5; 1.0 is our base;
# 0.4-0.8 because the embedded default's curve of training temperatures peaks at 0.4-0.6 (README,
# "Training results") and both learned methods settle at 0.6-0.8 there. The random-reward
# control is the best fixed arm of that curve (0.6) trained on coin flips.
DEFAULT_SET = {
    "fixed-0.4": "+experiment=fixed meta.temperature=0.4",
    "fixed-0.6": "+experiment=fixed meta.temperature=0.6",
    "fixed-0.8": "+experiment=fixed meta.temperature=0.8",
    "fixed-0.9": "+experiment=fixed meta.temperature=0.9",
    "fixed-1.0": "+experiment=fixed meta.temperature=1.0",
    "fixed-1.2": "+experiment=fixed meta.temperature=1.2",
    "fixed-1.5": "+experiment=fixed meta.temperature=1.5",
    "linear": "+experiment=linear",
    "ead": "+experiment=ead",
    "edt": "+experiment=edt",
    "tampo": "+experiment=tampo",
    "introllm": "+experiment=introllm",
    "random-reward": "+experiment=fixed meta.temperature=0.6 reward.random_control=true",
}
EVAL_TEMPERATURES = (0.6, 0.8, 1.0)
"""the shared decoding temperatures every arm's final model is evaluated at (--eval-temperatures)"""
METRICS = ("avg", "pass", "greedy")
"""the paired metrics: Avg@k, Pass@k (k = eval.samples), greedy accuracy"""
ROOT = Path(__file__).resolve().parents[1]


def run_one(out: Path, name: str, seed: int, overrides: str, extra: list[str],
            temperatures: list[float] = (), val_size: int = 0) -> Path:
    """Run (or reuse) one (strategy, seed) in ``OUT/<name>-s<seed>``; returns the folder.
    ``temperatures``, ``val_size``: the final decoding sweep (``sweep_overrides``); a reused run
    that lacks it gets it from ``launch.evaluate`` on its last checkpoint, into ``<run>/sweep``."""
    run_dir = out / f"{name}-s{seed}"
    sweep = sweep_overrides(temperatures, val_size)
    decodings = sweep_decodings(temperatures)
    # the arm's own overrides after the shared ones: they win (e.g. its budget's total_steps)
    args = [*extra, *shlex.split(overrides), f"seed={seed}", *sweep]
    if (run_dir / "final_metrics.json").exists():
        print(f"[compare] {run_dir.name}: done before, reused")
    else:
        _call(run_dir, "launch.run", [*args, f"hydra.run.dir={run_dir}"], run_dir / "compare.log")
    if sweep and not has_sweep(run_dir, decodings):
        _call(run_dir, "launch.evaluate", [*args, f"eval.checkpoint={run_dir}",
                                           f"hydra.run.dir={run_dir / 'sweep'}"],
              run_dir / "sweep.log")
        if not has_sweep(run_dir, decodings):
            raise RuntimeError(f"{run_dir.name}: launch.evaluate left no test and validation "
                               f"records at every one of {decodings}; does the "
                               "data have validation problems (data.val_path for local "
                               f"files)? See {run_dir / 'sweep.log'}")
    return run_dir


def _call(run_dir: Path, module: str, args: list[str], log_path: Path) -> None:
    cmd = [sys.executable, "-m", module, *args]
    print(f"[compare] {run_dir.name}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"{run_dir.name}: {module} failed (exit {rc}); see {log_path}")
    print(f"[compare] {run_dir.name}: {time.time() - t0:.0f} s", flush=True)


def sweep_overrides(temperatures: list[float], val_size: int) -> list[str]:
    """The launch.run / launch.evaluate overrides of the final decoding sweep (none without
    temperatures)."""
    if not temperatures:
        return []
    return [f"eval.temperatures=[{','.join(f'{t:g}' for t in temperatures)}]",
            f"data.val_size={val_size}"]


def sweep_decodings(temperatures: list[float]) -> list[str]:
    """The sweep's decodings by name: 'own', then the temperatures (t0.6, ...); none without
    temperatures."""
    return [decoding_name(t) for t in (None, *temperatures)] if temperatures else []


def budget_overrides(name: str, overrides: str, run, equal: str) -> tuple[str, str]:
    """(overrides, run folder prefix) of an arm under the comparison's budget; ``run``: the
    arm's composed RunConfig (``compose_arm``). 'responses': as given (every arm generates
    prompts_per_step x G responses per step, so equal steps are equal responses);
    'theta-updates': trainer.total_steps raised until θ is updated total_steps times
    (IntroLLM's alternating schedule needs twice the steps), in a folder named by its steps."""
    if equal == "responses":
        return overrides, name
    from launch.decoding import steps_for_theta_updates

    steps = steps_for_theta_updates(run, run.trainer.total_steps)
    if steps == run.trainer.total_steps:
        return overrides, name
    print(f"[compare] {name}: {steps} steps for {run.trainer.total_steps} θ updates")
    return f"{overrides} trainer.total_steps={steps}", f"{name}-steps{steps}"


def final_numbers(run_dir: Path) -> dict[str, float]:
    """base/final Avg@k, Pass@k and greedy accuracy (group 'all') and the run's seconds, from
    final_metrics.json."""
    fm = json.loads((Path(run_dir) / "final_metrics.json").read_text())
    out = {"seconds": float(fm.get("seconds", float("nan")))}
    for key, v in fm.items():
        for prefix, label in (("eval_base/all/", "base"), ("eval/all/", "final")):
            if key.startswith(prefix) and key[len(prefix):].split("@")[0] in ("avg", "pass"):
                metric = key[len(prefix):]
                if metric != "pass@1":
                    out[f"{label}/{metric}"] = float(v)
        for prefix, label in (("eval_base_greedy/all/", "base"), ("eval_greedy/all/", "final")):
            if key == prefix + "avg@1":
                out[f"{label}/greedy"] = float(v)
    return out


def default_baseline(results: dict[str, list[dict[str, float]]]) -> str:
    """The fixed temperature with the best mean final Avg@k (the comparison's first strategy when
    none is fixed)."""
    def avg(name):
        xs = [v for r in results[name] for k, v in r.items() if k.startswith("final/avg@")]
        return sum(xs) / len(xs) if xs else float("-inf")

    fixed = [n for n in results if n.startswith("fixed")]
    return max(fixed, key=avg) if fixed else next(iter(results))


def paired(runs: dict[str, list[Path]], seeds: list[int], baseline: str | None,
           reps: int = 10_000) -> dict[str, dict[str, dict]]:
    """{strategy: {metric: paired_bootstrap(...) vs the baseline}} for every other strategy,
    over the metrics whose per-problem records both have. ``baseline`` None: each strategy's
    last evaluation against its own first, the base model's (what training changed)."""
    from launch.metrics import problem_records
    from launch.paired import paired_bootstrap, paired_differences

    def records(name: str, greedy: bool, first: bool = False):
        got = {s: problem_records(d, greedy, first=first) for s, d in zip(seeds, runs[name])}
        return None if any(v is None for v in got.values()) else got

    out: dict[str, dict[str, dict]] = {}
    for name in runs:
        if name == baseline:
            continue
        out[name] = {}
        for metric in METRICS:
            greedy = metric == "greedy"
            a = records(name, greedy)
            b = records(baseline, greedy) if baseline else records(name, greedy, first=True)
            if a is not None and b is not None:
                score = "pass" if metric == "pass" else "avg"
                try:
                    out[name][metric] = paired_bootstrap(paired_differences(a, b, score), reps)
                except ValueError as err:  # e.g. other held-out settings: named in the report
                    out[name]["error"] = str(err)
    return out


def paired_table(diffs: dict[str, dict[str, dict]], baseline: str, k: str) -> str:
    """Markdown: one row per strategy, its difference to the baseline per metric with the 95 %
    interval (marked * when the interval excludes 0), then the smallest detectable difference."""
    from launch.paired import interval_cell

    names = {"avg": f"Avg@{k}", "pass": f"Pass@{k}", "greedy": "greedy"}
    head = ["strategy"] + [f"{names[m]} − {baseline} [95 % CI]" for m in METRICS]
    rows = [[name] + ["-" if by_metric.get(m) is None else interval_cell(by_metric[m])
                      for m in METRICS] for name, by_metric in diffs.items()]
    return "\n".join([markdown_table(head, rows)]
                     + [f"\n{name}: not paired: {d['error']}"
                        for name, d in diffs.items() if "error" in d])


def detectable(diffs: dict[str, dict[str, dict]]) -> dict[str, float]:
    """Per metric, the median over strategies of the smallest detectable difference."""
    import statistics

    out = {}
    for m in METRICS:
        xs = [d[m]["mde"] for d in diffs.values() if isinstance(d.get(m), dict)]
        if xs:
            out[m] = statistics.median(xs)
    return out


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Markdown: one row per strategy, mean ± std over its seeds."""
    metrics = sorted({k.split("/", 1)[1] for rs in results.values() for r in rs for k in r
                      if "/" in k})
    head = (["strategy", "seeds"] + [f"final {m}" for m in metrics]
            + [f"base {m}" for m in metrics] + ["s/run"])
    rows = []
    for name, rs in results.items():
        cells = [name, str(len(rs))]
        for label in ("final", "base"):
            for m in metrics:
                xs = [r[f"{label}/{m}"] for r in rs if f"{label}/{m}" in r]
                cells.append("{:.3f} ± {:.3f}".format(*mean_std(xs)) if xs else "-")
        cells.append(f"{mean_std([r['seconds'] for r in rs])[0]:.0f}")
        rows.append(cells)
    return markdown_table(head, rows)


def plot(out: Path, runs: dict[str, list[Path]]) -> Path:
    """Held-out accuracy and mean τ over steps, one line per strategy (mean over seeds)."""
    from launch.analyze import _plt, heldout_curve, load_metrics, save_figure, series

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, dirs in runs.items():
        metrics = [load_metrics(d) for d in dirs]
        for ax, curve, style in ((axes[0], lambda m: heldout_curve(m)[1:], "o-"),
                                 (axes[1], lambda m: series(m, "tau/mean"), "-")):
            curves = [dict(zip(*curve(m))) for m in metrics]
            curves = [c for c in curves if c]
            if curves:
                xs = sorted(set.intersection(*(set(c) for c in curves)))
                ax.plot(xs, [sum(c[x] for c in curves) / len(curves) for x in xs], style,
                        label=name, markersize=3)
    axes[0].set(xlabel="step", ylabel="held-out Avg@k", title="held-out accuracy (mean over seeds)")
    axes[1].set(xlabel="step", ylabel="mean τ", title="mean sampling temperature")
    axes[0].legend(fontsize=7)
    return save_figure(fig, out / "comparison.png")


def write_comparison(out: Path, runs: dict[str, list[Path]], seeds: list[int] | None = None,
                     baseline: str | None = None, reps: int = 10_000,
                     temperatures: list[str] = ()) -> Path:
    """comparison.md, comparison.json, comparison.png (and decoding.png) from the runs' folders;
    ``temperatures``: the shared decoding temperatures' names (t0.6, ...) of the runs' sweep."""
    from launch import decoding

    seeds = list(range(len(next(iter(runs.values()))))) if seeds is None else seeds
    results = {name: [final_numbers(d) for d in dirs] for name, dirs in runs.items()}
    budgets = {name: [decoding.budget(d) for d in dirs] for name, dirs in runs.items()}
    decodings = ["own", *temperatures]
    fair = bool(temperatures)
    if baseline is not None and baseline not in runs:
        raise ValueError(f"--baseline {baseline!r} is not one of the compared strategies "
                         f"{sorted(runs)}")
    if baseline is None:  # chosen on validation when the runs have it, never on test
        baseline = (decoding.tuned_baseline(runs, decodings) if fair
                    else default_baseline(results))
    diffs = paired(runs, seeds, baseline, reps)
    k = next((key.split("@")[1] for r in results[baseline] for key in r
              if key.startswith("final/avg@")), "k")
    mde = detectable(diffs)
    png = plot(out, runs)
    text = ["# Strategy comparison", "", "Runs: "
            + ", ".join(f"`{d.name}`" for dirs in runs.values() for d in dirs) + ".", ""]
    record = {"baseline": baseline, "seeds": seeds,
              "runs": {n: [str(d) for d in ds] for n, ds in runs.items()},
              "budgets": budgets}
    if fair:
        match = decoding.matched(runs, seeds, baseline, list(temperatures), reps)
        tuned = decoding.tuned(runs, seeds, baseline, decodings, reps)
        curves = decoding.plot_curves(out, runs, list(temperatures))
        record.update({"decodings": decodings, "matched": match, "tuned": tuned})
        text += ["## Test accuracy at each decoding", "",
                 "Held-out test Avg@k / Pass@k of each strategy's final model decoded at each "
                 "shared temperature (every token at it) and under its own policy (`own`), mean "
                 "over seeds:", "", decoding.scores_table(runs, decodings, k), "",
                 f"## Matched decoding: each strategy − **{baseline}**, both decoding every "
                 "token at the same temperature", "",
                 "The same held-out test problems, the same temperature and (for runs of equal "
                 "steps) the same sampling seed, paired problem by problem within a seed; 95 % "
                 "interval of a paired bootstrap over problems and seeds (* = excludes 0). A "
                 "learned temperature's own choices are set aside here: this compares the "
                 "trained weights θ.", "",
                 decoding.matched_table(match, baseline, k), "",
                 "## Tuned decoding: each strategy at its best decoding, chosen on validation",
                 "", "Per strategy and metric, the decoding (a shared temperature, or `own`: the "
                 "strategy's own policy, IntroLLM's head, TAMPO's π) with the best validation "
                 "score pooled over seeds (in brackets); the validation problems are a split "
                 "disjoint from the test problems, and the choice opens no test record. Then "
                 f"the test score at that choice, and the paired difference to {baseline} at its "
                 "own choice.", "", decoding.tuned_table(tuned, baseline, k), "",
                 f"![decoding]({curves.name})", ""]
    gains = paired(runs, seeds, baseline=None, reps=reps)  # each run against its base model
    record["trained"] = gains
    text += ["## What training changed: each run's final model − the base model", "",
             "Each run's last held-out evaluation minus its first (the base model, step 0), the "
             "same problems under the same rule (`eval.temperature`; greedy: argmax, one "
             "response), paired problem by problem; 95 % interval over problems and seeds. "
             "Greedy accuracy moving is RL teaching the model something; Avg@k rising with "
             "Pass@k flat or falling is the distribution sharpening (which a lower decoding "
             "temperature also gives). A learned rule's base evaluation uses its untrained "
             "policy (IntroLLM: the head as initialised).", "",
             paired_table(gains, "base", k), ""]
    text += ["## Budgets", "", "What each strategy was given (`launch.decoding.budget`, from the "
             "runs' logged steps): θ and φ optimizer updates, responses, tokens, the steps' "
             "seconds.", "",
             decoding.budget_table(budgets), ""]
    rule = ("## Each run's evaluation rule" + (" (confounded by decoding temperature)" if fair
                                                else ""))
    text += [rule, "",
             "Held-out accuracy of each strategy's last evaluation under `eval.temperature` "
             "(scalar strategies decode at it, per-token rules such as IntroLLM's head decide "
             "their own; greedy: argmax), and of the base model (evaluated by each run at step "
             "0), mean ± std over seeds" + (": arms here decode at different temperatures, so "
                                            "use the two sections above to compare them."
                                            if fair else "."), "",
             table(results), "",
             f"Paired differences to **{baseline}** (the same seeds, problem by problem; 95 % "
             f"interval from a paired bootstrap over held-out problems and seeds; * = the "
             f"interval excludes 0, otherwise this comparison cannot tell the two apart):", "",
             paired_table(diffs, baseline, k), ""]
    if mde:
        text += ["Smallest difference these sizes detect (80 % power, 95 % interval; median "
                 f"over strategies; {len(seeds)} seeds): "
                 + ", ".join(f"{m} {v:.3f}" for m, v in mde.items())
                 + ". It shrinks as 1 / sqrt(seeds x problems): `--seeds`, `--eval-size`.", ""]
    text += [f"![comparison]({png.name})", "",
             "Each run's own plots and numbers: `<run>/report.md`. Every number: "
             "`comparison.json`.", ""]
    record.update({"results": results, "paired": diffs, "detectable": mde})
    (out / "comparison.json").write_text(json.dumps(record, indent=2))
    path = out / "comparison.md"
    path.write_text("\n".join(text))
    return path


def compose_arm(ap: argparse.ArgumentParser, name: str, overrides: str, extra: list[str]):
    """The RunConfig of arm ``name``, or an argparse error naming the arm, its overrides and the
    rule they break (a Hydra grammar error or a config rule), before any run starts."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from launch.config import ConfigError, compose_run

    try:
        return compose_run([*extra, *shlex.split(overrides)])
    except (ConfigError, HydraException, OmegaConfBaseException, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
        shared = f" after {' '.join(extra)}" if extra else ""
        ap.error(f"strategy {name!r} ({overrides!r}{shared}) does not compose: {first}. "
                 "Overrides are space-separated launch.run arguments, e.g. --set "
                 "'cold=+experiment=fixed meta.temperature=0.6'")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="python -m launch.compare",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", help="names from the default set (or --set) to run")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=OVERRIDES",
                    help="a strategy of your own: a name and its launch.run overrides (with "
                         "--set and no --only, only the --set strategies run)")
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--baseline", default=None,
                    help="the strategy the others are paired against (default: the fixed "
                         "temperature with the best mean final Avg@k)")
    ap.add_argument("--eval-size", type=int, default=None,
                    help="held-out problems per run (data.eval_size)")
    ap.add_argument("--eval-samples", type=int, default=None,
                    help="responses per held-out problem, k of Avg@k / Pass@k (eval.samples)")
    ap.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples")
    ap.add_argument("--eval-temperatures", type=float, nargs="*", default=list(EVAL_TEMPERATURES),
                    metavar="T",
                    help="shared decoding temperatures every final model is evaluated at, on "
                         "test and validation, besides its own policy (matched and tuned "
                         "tables; none: only each run's own evaluation rule)")
    ap.add_argument("--val-size", type=int, default=250,
                    help="validation problems per run (data.val_size; synthetic data), where "
                         "each strategy's decoding is tuned")
    ap.add_argument("--equal", choices=("responses", "theta-updates"), default="responses",
                    help="the budget held equal: responses (the same steps: every strategy "
                         "generates the same per step) or theta-updates (strategies that update "
                         "θ in only some steps, e.g. IntroLLM alternating, run longer)")
    args = ap.parse_args(argv)
    strategies = dict(DEFAULT_SET)
    for item in args.set:
        name, sep, overrides = item.partition("=")
        if not sep or not name:
            ap.error(f"--set {item!r} must be NAME=OVERRIDES, e.g. "
                     "--set 'hot=+experiment=fixed meta.temperature=1.4'")
        strategies[name] = overrides
    if args.only:
        unknown = [n for n in args.only if n not in strategies]
        if unknown:
            ap.error(f"--only {unknown} not in {sorted(strategies)}; add one with "
                     "--set NAME=OVERRIDES")
        strategies = {n: strategies[n] for n in args.only}
    elif args.set:
        strategies = {n: strategies[n] for n in [i.partition("=")[0] for i in args.set]}
    if args.baseline is not None and args.baseline not in strategies:
        ap.error(f"--baseline {args.baseline!r} is not one of the compared strategies "
                 f"{sorted(strategies)}")
    sizes = ([f"data.eval_size={args.eval_size}"] if args.eval_size is not None else []) + (
        [f"eval.samples={args.eval_samples}"] if args.eval_samples is not None else [])
    args.seeds = list(dict.fromkeys(args.seeds))  # a seed given twice is one run
    if any(t <= 0 for t in args.eval_temperatures):
        ap.error(f"--eval-temperatures {args.eval_temperatures} must all be > 0")
    if args.eval_temperatures and args.val_size < 1:
        ap.error(f"--val-size ({args.val_size}) must be >= 1 with --eval-temperatures: each "
                 "arm's decoding is tuned on validation problems (give --eval-temperatures "
                 "with no values for none)")
    temps = list(dict.fromkeys(args.eval_temperatures))
    # every arm's overrides composed and validated before the first run (hours may go by)
    composed = {name: compose_arm(ap, name, ov, sizes + extra) for name, ov in strategies.items()}
    if temps:  # local files: the validation problems are the user's (data.val_path)
        data = next(iter(composed.values())).data
        if data.source != "synthetic" and not data.val_path:
            ap.error(f"data.source={data.source} has no validation problems: pass "
                     "-- data.val_path=/path/to/val.jsonl (disjoint from data.eval_path), or "
                     "--eval-temperatures with no values for no tuned comparison")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, ov in strategies.items():
        ov, folder = budget_overrides(name, ov, composed[name], args.equal)
        runs[name] = [run_one(out, folder, s, ov, sizes + extra, temps, args.val_size)
                      for s in args.seeds]
    path = write_comparison(out, runs, args.seeds, args.baseline, args.reps,
                            sweep_decodings(temps)[1:])
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
