"""Held-out accuracy of a served model: the run's held-out problems through ``launch.serve``.

    .venv/bin/python -m launch.serve RUN/final_model --port 8011 &          # the server
    .venv/bin/python scripts/eval_served.py RUN --url http://127.0.0.1:8011 [--samples 8]

The problems, prompts (template, instruction, prompt truncation), response length and scoring are
the run's own (its ``resolved_config.yaml``), as ``launch.evaluate`` uses them; each problem is one
completion request with n = samples at the server's default temperature (the head's own τ). Prints
Avg@k / Pass@k overall and writes them as JSON (``--out``), so that the served model can be set
beside the run's own final evaluation of the same weights; the two draw different random numbers,
so they agree within sampling error, not exactly. With ``--out``, each problem's results go beside
it (``*.problems.jsonl``), and, when the run's final evaluation has the same k, the JSON holds the
served-minus-run difference in Avg@k and Pass@k, problem by problem, with its 95 % paired-bootstrap
interval (``launch/paired.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--url", default="http://127.0.0.1:8011")
    parser.add_argument("--samples", type=int, default=None, help="default: the run's eval.samples")
    parser.add_argument("--out", default=None)
    parser.add_argument("--separate", action="store_true",
                        help="k requests with n = 1 per problem instead of one with n = k")
    args = parser.parse_args()

    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from data.prompts import render_prompt
    from launch.config import validate
    from launch.inputs import load_data
    from launch.metrics import format_table, groups_of, problem_records, summarize
    from launch.paired import paired_bootstrap, paired_differences
    from reward.extract import last_boxed
    from reward.score import correctness

    run_dir = Path(args.run_dir)
    run = validate(OmegaConf.to_container(OmegaConf.load(run_dir / "resolved_config.yaml")))
    model = run_dir / "final_model"
    k = args.samples or run.eval.samples
    tok = AutoTokenizer.from_pretrained(model)
    _, heldout = load_data(run)
    models = json.loads(urllib.request.urlopen(f"{args.url}/v1/models").read())
    name = models["data"][0]["id"]

    def ask(p):
        ids = tok(render_prompt(p, tok, run.data.prompt_template, run.data.instruction))
        body = {"model": name, "prompt": ids["input_ids"][-run.rollout.max_prompt_tokens:],
                "n": 1 if args.separate else k, "max_tokens": run.rollout.max_new_tokens}
        req = urllib.request.Request(f"{args.url}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        texts = [c["text"] for _ in range(k if args.separate else 1)
                 for c in json.loads(urllib.request.urlopen(req).read())["choices"]]
        return {"correct": [correctness(p.task, t, p.answer, p.meta) for t in texts],
                "answers": [last_boxed(t) for t in texts], "groups": groups_of(p)}

    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(ask, heldout))
    metrics = summarize(records, ks=tuple(sorted({1, k})))
    print(f"served {model} ({len(heldout)} problems x {k} samples):")
    print(format_table(metrics, k))
    out = {"model": str(model), "problems": len(heldout), "samples": k,
           **{f"eval/{key}": v for key, v in metrics.items()}}
    if args.out:
        served = {p.id: r["correct"] for p, r in zip(heldout, records)}
        Path(args.out).with_suffix(".problems.jsonl").write_text("".join(
            json.dumps({"problem_id": p.id, **r}) + "\n" for p, r in zip(heldout, records)))
        own = problem_records(run_dir)  # the run's own final evaluation
        if own and all(len(v) == k for v in own.values()):
            out["served_minus_run"] = {
                score: paired_bootstrap(paired_differences({0: served}, {0: own}, score))
                for score in ("avg", "pass")}
            print("served - run:", json.dumps(out["served_minus_run"], indent=1))
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
