"""Held-out evaluation: k samples per problem, scored by the verifiers, Avg@k / Pass@k / maj@k
overall, per task family and per difficulty level.

The scoring and the metrics are independent of how responses are generated: ``evaluate`` takes
a ``generate(prompts, k) -> list[list[str]]`` callable, so every engine plugs in.
``hf_sampler`` is the plain transformers sampler used for a model's baseline.
"""

from __future__ import annotations

import logging
from typing import Callable

from data.synthetic import Problem
from launch.metrics import summarize

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[str], int], list[list[str]]]


def groups_of(p: Problem) -> list[str]:
    """The groups a problem's metrics count under: its family, its level, and both."""
    level = f"L{p.level}" if p.level else "L?"
    return [p.task, level, f"{p.task}/{level}"]


def score_responses(problems: list[Problem], responses: list[list[str]], pool=None) -> list[dict]:
    """Per-problem records ``{correct, answers, groups}`` for ``launch.metrics.summarize``."""
    from reward.extract import last_boxed
    from reward.score import score

    items = [(p.task, r, p.answer, p.meta) for p, rs in zip(problems, responses) for r in rs]
    if pool is not None:
        flat, _ = pool.score_batch(items)
    else:
        flat = [score(*item) for item in items]
    out, i = [], 0
    for p, rs in zip(problems, responses):
        out.append({"correct": flat[i : i + len(rs)], "answers": [last_boxed(r) for r in rs],
                    "groups": groups_of(p)})
        i += len(rs)
    return out


def evaluate(problems: list[Problem], prompts: list[str], generate: GenerateFn, k: int,
             pool=None) -> dict[str, float]:
    """Generate k responses per prompt, score them, and summarise (keys like 'all/avg@8')."""
    responses = generate(prompts, k)
    records = score_responses(problems, responses, pool)
    ks = tuple(sorted({1, k}))
    return summarize(records, ks=ks)


def hf_sampler(model, tokenizer, temperature: float = 1.0, max_new_tokens: int = 64,
               batch_size: int = 64) -> GenerateFn:
    """Plain transformers sampling at one temperature (no top-k / top-p), or greedy at 0."""
    import torch

    tokenizer.padding_side = "left"

    def generate(prompts: list[str], k: int) -> list[list[str]]:
        flat = [p for p in prompts for _ in range(k)]
        texts: list[str] = []
        with torch.no_grad():
            for s in range(0, len(flat), batch_size):
                enc = tokenizer(flat[s : s + batch_size], return_tensors="pt", padding=True)
                sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) \
                    if temperature > 0 else dict(do_sample=False)
                out = model.generate(**enc, **sampling, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
                texts += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                skip_special_tokens=True)
        return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]

    return generate


def format_table(metrics: dict[str, float], k: int) -> str:
    """A small text table: one row per group with n, Avg@k, Pass@1, Pass@k, maj@k."""
    groups = sorted({key.split("/avg@")[0] for key in metrics if "/avg@" in key},
                    key=lambda g: (g != "all", g))
    lines = [f"{'group':<16} {'n':>5} {'avg@' + str(k):>8} {'pass@1':>8} {'pass@' + str(k):>8} "
             f"{'maj@' + str(k):>8}"]
    for g in groups:
        row = [metrics.get(f"{g}/n", 0), metrics.get(f"{g}/avg@{k}", float("nan")),
               metrics.get(f"{g}/pass@1", float("nan")), metrics.get(f"{g}/pass@{k}", float("nan")),
               metrics.get(f"{g}/maj@{k}", float("nan"))]
        lines.append(f"{g:<16} {row[0]:>5.0f} " + " ".join(f"{v:>8.3f}" for v in row[1:]))
    return "\n".join(lines)
