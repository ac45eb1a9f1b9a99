"""Compare temperature strategies over seeds: one command, one markdown table, plots side by side.

    python -m launch.compare                                    # the default set x seeds 0 1 2
    python -m launch.compare --seeds 0 1 --only fixed-1.0 introllm --out runs/compare
    python -m launch.compare --set "mine=+experiment=introllm meta.tau_max=2.0" \\
        -- trainer.total_steps=60

Each (strategy, seed) is a full ``python -m launch.run`` in its own folder ``OUT/<name>-s<seed>``,
one after another (each run uses the whole machine). A run whose folder already holds
``final_metrics.json`` is not run again, so an interrupted comparison continues where it stopped.
Then ``OUT/comparison.md`` gets, per strategy, the held-out Avg@k and Pass@k of the last
evaluation as mean ± std over seeds (and the base model's, evaluated by every run at step 0),
and ``OUT/comparison.png`` the held-out accuracy and mean τ over steps, one line per strategy.
Seeds change the data order, the held-out problems, the strategy's draws and the sampling, so a
comparison is repeatable on the same machine.
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

from launch.analyze import mean_std

# name -> launch.run overrides. TAMPO's paper compares fixed 0.9, 1.2, 1.5; 1.0 is our base.
DEFAULT_SET = {
    "fixed-0.9": "+experiment=fixed meta.temperature=0.9",
    "fixed-1.0": "+experiment=fixed meta.temperature=1.0",
    "fixed-1.2": "+experiment=fixed meta.temperature=1.2",
    "fixed-1.5": "+experiment=fixed meta.temperature=1.5",
    "linear": "+experiment=linear",
    "ead": "+experiment=ead",
    "edt": "+experiment=edt",
    "tampo": "+experiment=tampo",
    "introllm": "+experiment=introllm",
}
ROOT = Path(__file__).resolve().parents[1]


def run_one(out: Path, name: str, seed: int, overrides: str, extra: list[str]) -> Path:
    """Run (or reuse) one (strategy, seed); returns its folder."""
    run_dir = out / f"{name}-s{seed}"
    if (run_dir / "final_metrics.json").exists():
        print(f"[compare] {run_dir.name}: done before, reused")
        return run_dir
    cmd = [sys.executable, "-m", "launch.run", *shlex.split(overrides), f"seed={seed}",
           f"hydra.run.dir={run_dir}", *extra]
    print(f"[compare] {run_dir.name}: {' '.join(cmd[2:])}", flush=True)
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "compare.log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"{run_dir.name} failed (exit {rc}); see {run_dir / 'compare.log'}")
    print(f"[compare] {run_dir.name}: {time.time() - t0:.0f} s", flush=True)
    return run_dir


def final_numbers(run_dir: Path) -> dict[str, float]:
    """base/final Avg@k and Pass@k (group 'all') and the run's seconds, from final_metrics.json."""
    fm = json.loads((Path(run_dir) / "final_metrics.json").read_text())
    out = {"seconds": float(fm.get("seconds", float("nan")))}
    for key, v in fm.items():
        for prefix, label in (("eval_base/all/", "base"), ("eval/all/", "final")):
            if key.startswith(prefix) and key[len(prefix):].split("@")[0] in ("avg", "pass"):
                metric = key[len(prefix):]
                if metric != "pass@1":
                    out[f"{label}/{metric}"] = float(v)
    return out


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """Markdown: one row per strategy, mean ± std over its seeds."""
    metrics = sorted({k.split("/", 1)[1] for rs in results.values() for r in rs for k in r
                      if "/" in k})
    head = (["strategy", "seeds"] + [f"final {m}" for m in metrics]
            + [f"base {m}" for m in metrics] + ["s/run"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, rs in results.items():
        cells = [name, str(len(rs))]
        for label in ("final", "base"):
            for m in metrics:
                xs = [r[f"{label}/{m}"] for r in rs if f"{label}/{m}" in r]
                cells.append("{:.3f} ± {:.3f}".format(*mean_std(xs)) if xs else "-")
        cells.append(f"{mean_std([r['seconds'] for r in rs])[0]:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out: Path, runs: dict[str, list[Path]]) -> Path:
    """Held-out accuracy and mean τ over steps, one line per strategy (mean over seeds)."""
    from launch.analyze import _plt, heldout_curve, load_metrics, series

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
    fig.tight_layout()
    path = out / "comparison.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_comparison(out: Path, runs: dict[str, list[Path]]) -> Path:
    results = {name: [final_numbers(d) for d in dirs] for name, dirs in runs.items()}
    png = plot(out, runs)
    text = ["# Strategy comparison", "",
            "Held-out accuracy of each strategy's last evaluation (and of the base model, "
            "evaluated by each run at step 0), mean ± std over seeds. Runs: "
            + ", ".join(f"`{d.name}`" for dirs in runs.values() for d in dirs) + ".", "",
            table(results), "", f"![comparison]({png.name})", "",
            "Each run's own plots and numbers: `<run>/report.md`.", ""]
    path = out / "comparison.md"
    path.write_text("\n".join(text))
    return path


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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {name: [run_one(out, name, s, ov, extra) for s in args.seeds]
            for name, ov in strategies.items()}
    path = write_comparison(out, runs)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
