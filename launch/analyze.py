"""The papers' temperature analyses and a run report, from a run folder alone.

    python -m launch.analyze RUN_DIR          # writes RUN_DIR/report.md and RUN_DIR/plots/*.png

``launch.run`` calls it at the end of every run. Inputs: ``metrics.jsonl`` (per-step metrics,
evaluations), ``rollouts/step_*.jsonl`` (every response of a dumped step with its per-token τ,
tokens, level, reward) and ``resolved_config.yaml``. Each plot is skipped, with a line in the
report saying why, when its inputs are missing (e.g. the TAMPO heatmap for other strategies).

Plots (IntroLLM's and TAMPO's figures, for any strategy):
- ``tau_by_level``: mean and spread of τ per difficulty level (dumps of the second half of the run)
- ``tau_along_response``: τ token by token along one response, and mean τ by position
- ``top_tau_tokens``: the tokens with the highest mean τ (at least ``MIN_COUNT`` occurrences)
- ``tau_over_steps``: τ mean/min/max per step, overall and per level
- ``tampo_pi``: TAMPO's π(T_k) per step as a heatmap, with the chosen T_s
- ``tau_entropy``: correlation of τ with the untempered entropy per step (learner's old pass)
- ``tau_entropy_scatter``: τ against the entropy of the untempered distribution, token by token,
  for the last dumped step that has a checkpoint: checkpoint ``step_N`` holds θ after N updates,
  the weights that generated dump ``step_N``, so the entropies are recomputed exactly (in fp32:
  approximately for a bf16 run; up to ``SCATTER_RESPONSES`` responses, with the run's own model
  folder and prompts)
- ``curves``: training reward and held-out Avg@k
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

MIN_COUNT = 20  # occurrences a token needs to enter the highest-τ ranking
SCATTER_RESPONSES = 128  # responses of one dump whose per-token entropies are recomputed


def load_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def load_dumps(run_dir: Path, from_step: int = 0) -> list[dict]:
    rows = []
    for path in sorted((Path(run_dir) / "rollouts").glob("step_*.jsonl")):
        if int(path.stem.split("_")[1]) >= from_step:
            rows += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return rows


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the header, its rule, one line per row of cells."""
    return "\n".join("| " + " | ".join(cells) + " |"
                     for cells in [head, ["---"] * len(head), *rows])


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (110 dpi) and close a matplotlib figure; returns `path`."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1))


# ---------------------------------------------------------------------- the analyses (data)


def tau_by_level(dumps: list[dict]) -> dict[int, tuple[float, float, int]]:
    """level -> (mean τ, std τ, tokens)."""
    by: dict[int, list[float]] = defaultdict(list)
    for r in dumps:
        by[int(r["level"])] += r["tau"]
    return {lvl: (*mean_std(v), len(v)) for lvl, v in sorted(by.items()) if v}


def tau_by_position(dumps: list[dict], max_len: int = 256) -> list[tuple[float, int]]:
    """position -> (mean τ, responses that reach it)."""
    sums, counts = [0.0] * max_len, [0] * max_len
    for r in dumps:
        for t, tau in enumerate(r["tau"][:max_len]):
            sums[t] += tau
            counts[t] += 1
    return [(s / c, c) for s, c in zip(sums, counts) if c]


def top_tau_tokens(dumps: list[dict], k: int = 15,
                   min_count: int = MIN_COUNT) -> list[tuple[str, float, int]]:
    """(token text, mean τ, count) of the k tokens with the highest mean τ."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in dumps:
        for tok, tau in zip(r.get("tokens") or [str(t) for t in r["token_ids"]], r["tau"]):
            by[tok].append(tau)
    rows = [(tok, sum(v) / len(v), len(v)) for tok, v in by.items() if len(v) >= min_count]
    return sorted(rows, key=lambda x: -x[1])[:k]


def example_response(dumps: list[dict]) -> dict | None:
    """A correct response of median length from the hardest level that has one."""
    good = [r for r in dumps if (r.get("reward") or 0) >= 1.0 and len(r["tau"]) > 1]
    if not good:
        return None
    top = max(int(r["level"]) for r in good)
    pool = sorted((r for r in good if int(r["level"]) == top), key=lambda r: len(r["tau"]))
    return pool[len(pool) // 2]


def entropy_pairs(run_dir: Path, max_responses: int = SCATTER_RESPONSES):
    """(step, [(untempered entropy, τ)] per token) of the last dump with a matching checkpoint.

    Returns (None, why) when there is none, or τ does not vary within the step.
    """
    from launch.checkpoint import checkpoint_weights, complete_checkpoints

    run_dir = Path(run_dir)
    steps = [int(c.name.split("_")[1]) for c in complete_checkpoints(run_dir)]
    steps = [n for n in steps if (run_dir / "rollouts" / f"step_{n:06d}.jsonl").exists()]
    if not steps:
        return None, ("no dumped step has a checkpoint (needs trainer.dump_every to divide "
                      "save_every)")
    step = max(steps)
    rows = [json.loads(x) for x in (run_dir / "rollouts" / f"step_{step:06d}.jsonl").read_text()
            .splitlines() if x.strip()][:max_responses]
    if len({t for r in rows for t in r["tau"]}) < 2:
        return None, "τ is constant within each step (scalar strategy)"
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data.prompts import render_prompt
    from launch.config import validate
    from launch.inputs import load_data, resolve_model_path
    from learner.logprobs import token_entropy

    run = validate(OmegaConf.load(run_dir / "resolved_config.yaml"))
    model_path = resolve_model_path(run, check=False)  # a finished run: only read it
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    weights, _ = checkpoint_weights(run_dir / "checkpoints" / f"step_{step:06d}")
    theta = {k: v for k, v in weights.items() if not k.startswith("temperature_head.")}
    missing, _ = model.load_state_dict(theta, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())  # the embedding, sent as such
    missing = [k for k in missing if k not in tied]
    if missing:
        return None, (f"checkpoint step_{step:06d} lacks {len(missing)} model weights "
                      f"({missing[0]}, ...)")
    problems = {p.id: p for p in load_data(run)[0]}
    pairs = []
    with torch.no_grad():
        for r in rows:
            if r["problem_id"] not in problems or not r["token_ids"]:
                continue
            prompt = tok(render_prompt(problems[r["problem_id"]], tok, run.data.prompt_template,
                                       run.data.instruction))["input_ids"][-run.rollout.max_prompt_tokens:]
            ids = torch.tensor([prompt + r["token_ids"][:-1]])
            logits = model(input_ids=ids, logits_to_keep=len(r["token_ids"])).logits  # (1, t, V)
            ent = token_entropy(logits)[0].tolist()
            pairs += list(zip(ent, r["tau"]))
    return step, pairs


def pearson(pairs: list[tuple[float, float]]) -> float:
    n = len(pairs)
    if n < 2:
        return float("nan")
    mx, my = sum(x for x, _ in pairs) / n, sum(y for _, y in pairs) / n
    sxy = sum((x - mx) * (y - my) for x, y in pairs)
    sxx, syy = sum((x - mx) ** 2 for x, _ in pairs), sum((y - my) ** 2 for _, y in pairs)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in metrics if key in r and r[key] is not None
           and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def heldout_curve(metrics: list[dict]) -> tuple[str | None, list[int], list[float]]:
    """(metric key, steps, values) of the held-out Avg@k over training, with the base model's
    evaluation at step 0 when it was logged; (None, [], []) without evaluations."""
    key = next((k for r in metrics for k in r if k.startswith("eval/all/avg@")), None)
    if key is None:
        return None, [], []
    x, y = series(metrics, key)
    base = next((r[k] for r in metrics for k in r if k.startswith("eval_base/all/avg@")), None)
    return (key, [0] + x, [base] + y) if base is not None else (key, x, y)


def second_half_dumps(run_dir: Path, metrics: list[dict]) -> tuple[int, list[dict]]:
    """(first step, dumps) of the second half of the run: the learned behaviour, not the start."""
    steps = [r["step"] for r in metrics if "critic/score/mean" in r]
    half = steps[len(steps) // 2] - 1 if steps else 0
    return half, load_dumps(run_dir, from_step=half)


# ---------------------------------------------------------------------- plotting


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


NO_DUMPS = "no rollout dumps (trainer.dump_every=0)"


@dataclass(frozen=True)
class _Run:
    """What the figures are drawn from: the run folder, its metrics, and its dumps from step
    ``half`` on (the second half of the run)."""

    run_dir: Path
    metrics: list[dict]
    half: int
    dumps: list[dict]


# Each figure function returns the figure, or a string: why it is not drawn (a line of the
# report), or None: nothing to draw and nothing to say (e.g. no metrics logged yet).


def plot_tau_by_level(plt, run: _Run):
    if not run.dumps:
        return NO_DUMPS
    levels = tau_by_level(run.dumps)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = list(levels)
    ax.errorbar(xs, [levels[x][0] for x in xs], yerr=[levels[x][1] for x in xs], fmt="o-",
                capsize=4)
    ax.set(xlabel="difficulty level", ylabel="τ (mean ± std)", xticks=xs,
           title=f"τ by level (dumps from step {run.half})")
    return fig


def plot_tau_along_response(plt, run: _Run):
    if not run.dumps:
        return NO_DUMPS
    ex = example_response(run.dumps)
    pos = tau_by_position(run.dumps)
    fig, axes = plt.subplots(2, 1, figsize=(9, 5.5))
    if ex is not None:
        toks = ex.get("tokens") or [str(t) for t in ex["token_ids"]]
        axes[0].bar(range(len(ex["tau"])), ex["tau"], color="tab:orange")
        axes[0].set_xticks(range(len(toks)))
        axes[0].set_xticklabels([t.replace("\n", "\\n") for t in toks], rotation=90, fontsize=7)
        axes[0].set(ylabel="τ", title=f"one response (L{ex['level']}, correct): τ per token")
    axes[1].plot([p[0] for p in pos])
    axes[1].set(xlabel="position in response", ylabel="mean τ", title="mean τ by position")
    return fig


def plot_top_tau_tokens(plt, run: _Run):
    top = top_tau_tokens(run.dumps) if run.dumps else []
    if not top:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.barh([repr(t[0]) for t in top][::-1], [t[1] for t in top][::-1])
    ax.set(xlabel="mean τ", title=f"tokens with the highest τ (≥ {MIN_COUNT} uses)")
    return fig


def plot_tau_over_steps(plt, run: _Run):
    if not series(run.metrics, "tau/mean")[0]:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, style in (("tau/mean", "-"), ("tau/min", ":"), ("tau/max", ":")):
        axes[0].plot(*series(run.metrics, key), style, label=key.split("/")[1])
    axes[0].set(xlabel="step", ylabel="τ", title="τ over training")
    axes[0].legend()
    for lvl in range(1, 6):
        sx, sy = series(run.metrics, f"tau/mean_L{lvl}")
        if sx:
            axes[1].plot(sx, sy, label=f"L{lvl}")
    axes[1].set(xlabel="step", ylabel="mean τ", title="mean τ per level")
    axes[1].legend(fontsize=7)
    return fig


def plot_tampo_pi(plt, run: _Run):
    metrics = run.metrics
    pi_keys = sorted({k for r in metrics for k in r if k.startswith("tampo/pi_T")},
                     key=lambda k: float(k.split("_T")[1]))
    if not pi_keys:
        return "not a TAMPO run"
    rows = [r for r in metrics if pi_keys[0] in r]
    grid = [[r[k] for r in rows] for k in pi_keys]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis",
                   extent=(rows[0]["step"] - 0.5, rows[-1]["step"] + 0.5,
                           -0.5, len(pi_keys) - 0.5))
    temps = [float(k.split("_T")[1]) for k in pi_keys]
    ax.set_yticks(range(len(temps)))
    ax.set_yticklabels([f"{t:.2f}" for t in temps])
    cx, cy = series(metrics, "rollout/planned_temperature")
    ax.plot(cx, [min(range(len(temps)), key=lambda i: abs(temps[i] - t)) for t in cy], "w.",
            markersize=3, label="chosen T_s")
    ax.set(xlabel="step", ylabel="candidate T", title="TAMPO π(T_k) over steps")
    ax.legend(loc="upper right", fontsize=7)
    fig.colorbar(im, ax=ax)
    return fig


def plot_tau_entropy(plt, run: _Run):
    cx, cy = series(run.metrics, "tau/entropy_corr")
    if not cx:
        return "τ is constant within each step (scalar strategy)"
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(cx, cy)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="step", ylabel="Pearson r", title="τ vs entropy of the untempered distribution")
    return fig


def plot_tau_entropy_scatter(plt, run: _Run):
    try:
        step, pairs = entropy_pairs(run.run_dir)
    except Exception as err:  # noqa: BLE001 - one optional plot; the report says why it is missing
        return f"could not recompute the entropies: {type(err).__name__}: {err}"
    if step is None:
        return pairs  # why there is nothing to recompute
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([x for x, _ in pairs], [y for _, y in pairs], s=3, alpha=0.3)
    ax.set(xlabel="entropy of softmax(z) (nats)", ylabel="τ",
           title=f"τ vs untempered entropy, step {step}\n"
                 f"{len(pairs)} tokens, Pearson r = {pearson(pairs):.2f}")
    return fig


def plot_curves(plt, run: _Run):
    rx, ry = series(run.metrics, "critic/score/mean")
    if not rx:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    w = max(1, len(ry) // 20)
    windows = [ry[max(0, i - w + 1): i + 1] for i in range(len(ry))]
    smooth = [sum(win) / len(win) for win in windows]
    ax.plot(rx, ry, alpha=0.3, label="train reward")
    ax.plot(rx, smooth, label=f"train reward ({w}-step mean)")
    key, ex, ey = heldout_curve(run.metrics)
    if key:
        ax.plot(ex, ey, "o-", label=f"held-out {key.split('/')[-1]}")
    ax.set(xlabel="step", ylabel="accuracy", title="reward and held-out accuracy")
    ax.legend(fontsize=7)
    return fig


FIGURES = {
    "tau_by_level": plot_tau_by_level,
    "tau_along_response": plot_tau_along_response,
    "top_tau_tokens": plot_top_tau_tokens,
    "tau_over_steps": plot_tau_over_steps,
    "tampo_pi": plot_tampo_pi,
    "tau_entropy": plot_tau_entropy,
    "tau_entropy_scatter": plot_tau_entropy_scatter,
    "curves": plot_curves,
}
"""file name (plots/<name>.png) -> its figure function, in the report's order"""


def make_plots(run_dir: Path, metrics: list[dict], half: int,
               dumps: list[dict]) -> tuple[dict[str, Path], dict[str, str]]:
    """Write the PNGs from the run's metrics and its dumps from step `half` on; returns
    ({name: path}, {name: why it was skipped})."""
    run = _Run(Path(run_dir), metrics, half, dumps)
    out_dir = run.run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    plt = _plt()
    made, skipped = {}, {}
    for name, draw in FIGURES.items():
        fig = draw(plt, run)
        if isinstance(fig, str):
            skipped[name] = fig
        elif fig is not None:
            made[name] = save_figure(fig, out_dir / f"{name}.png")
    return made, skipped


# ---------------------------------------------------------------------- the report


def _final_table(metrics: list[dict]) -> list[str]:
    base = {k[len("eval_base/"):]: v for r in metrics for k, v in r.items()
            if k.startswith("eval_base/")}
    final: dict[str, float] = {}
    for r in metrics:  # the last evaluation
        if any(k.startswith("eval/") for k in r):
            final = {k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}
    if not final and not base:
        return ["(no held-out evaluation logged)"]
    k = next((key.split("avg@")[1] for key in {**base, **final} if "avg@" in key), "k")
    groups = sorted({key.split("/avg@")[0] for key in {**base, **final} if "/avg@" in key},
                    key=lambda g: (g != "all", g))
    lines = [f"| group | n | base Avg@{k} | final Avg@{k} | base Pass@{k} | final Pass@{k} |",
             "| --- | --- | --- | --- | --- | --- |"]
    fmt = lambda d, key: f"{d[key]:.3f}" if key in d else "-"  # noqa: E731
    for g in groups:
        n = final.get(f"{g}/n", base.get(f"{g}/n", 0))
        lines.append(f"| {g} | {n:.0f} | {fmt(base, f'{g}/avg@{k}')} "
                     f"| {fmt(final, f'{g}/avg@{k}')} "
                     f"| {fmt(base, f'{g}/pass@{k}')} | {fmt(final, f'{g}/pass@{k}')} |")
    return lines


def write_report(run_dir: Path) -> Path:
    """RUN_DIR/report.md: the config, the final numbers, the plots (readable without wandb)."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir)
    half, dumps = second_half_dumps(run_dir, metrics)
    made, skipped = make_plots(run_dir, metrics, half, dumps)
    cfg_path = run_dir / "resolved_config.yaml"
    cfg = cfg_path.read_text() if cfg_path.exists() else "(no resolved_config.yaml)"
    summary_path = run_dir / "final_metrics.json"
    seconds = json.loads(summary_path.read_text()).get("seconds") if summary_path.exists() else None
    steps = [r for r in metrics if "critic/score/mean" in r]
    lines = [f"# Run report: {run_dir.name}", ""]
    if steps:
        lines.append(f"{len(steps)} steps" + (f" in {seconds:.0f} s" if seconds else "") +
                     f"; last step's train reward {steps[-1]['critic/score/mean']:.3f}, "
                     f"mean τ {steps[-1].get('tau/mean', float('nan')):.3f}.")
    lines += ["", "## Held-out evaluation (before training and at the last evaluation)", ""]
    lines += _final_table(metrics)
    top = top_tau_tokens(dumps)
    if top:
        lines += ["", "## Tokens with the highest τ", "", "| token | mean τ | count |",
                  "| --- | --- | --- |"]
        lines += [f"| `{t!r}` | {m:.3f} | {c} |" for t, m, c in top]
    lines += ["", "## Plots", ""]
    for name, path in made.items():
        lines += [f"### {name.replace('_', ' ')}", "", f"![{name}](plots/{path.name})", ""]
    for name, why in skipped.items():
        lines.append(f"- {name}: not drawn ({why})")
    lines += ["", "## Configuration", "", "```yaml", cfg.rstrip(), "```", ""]
    out = run_dir / "report.md"
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(out)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m launch.analyze RUN_DIR  (a run folder with metrics.jsonl)",
              file=sys.stderr)
        return 2
    print(f"report: {write_report(Path(argv[0]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
