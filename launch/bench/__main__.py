"""Benchmarks: ``python -m launch.bench <name> [options]``; each prints the machine, its settings
and a results table, and writes everything as JSON with ``--out FILE``.

    python -m launch.bench rollout                         # embedded model, vLLM + transformers
    python -m launch.bench learner                         # theta vs phi step, TAMPO l_k share
    python -m launch.bench trl                             # s/step: this system vs TRL GRPOTrainer
    python -m launch.bench pipeline                        # s/step: synchronous vs 1 off-policy
    python -m launch.bench sync                            # weight sync: collective vs object store
    python -m launch.bench gpu --out results/gpu.json      # GPU sizes: MFU, head, bf16, l_k
    python -m launch.bench rollout --engines hf --reps 3 --prompts 16 --out bench.json

``python -m launch.bench <name> --help`` describes one benchmark: what it times and how.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from launch.bench.gpu import add_gpu_parser
from launch.bench.harness import write_json
from launch.bench.learner import add_learner_parser
from launch.bench.pipeline import add_pipeline_parser
from launch.bench.rollout import add_rollout_parser
from launch.bench.sync import add_sync_parser
from launch.bench.trl import add_trl_parser

SUBCOMMANDS = (add_rollout_parser, add_learner_parser, add_trl_parser, add_pipeline_parser,
               add_sync_parser, add_gpu_parser)
"""One ``add_<name>_parser(sub)`` per benchmark, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="<benchmark>")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` (default: the command line), run the benchmark, write ``--out``; the
    benchmark's result dict is returned (the tests read it)."""
    args = build_parser().parse_args(argv)
    result = args.func(args)
    write_json(getattr(args, "out", None), result)
    return result


if __name__ == "__main__":
    main()
