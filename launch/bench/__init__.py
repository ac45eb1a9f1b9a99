"""The benchmarks, run as ``python -m launch.bench <name>`` (``__main__.py``: the command line).

    harness.py   interleaved timing of arms, order statistics, paired ratios, tables, the
                 machine's description, JSON output, the shared inputs (every benchmark uses it)
    rollout.py   ``rollout``: engine tokens/s, IntroLLM head vs fixed tau, vLLM vs transformers
    learner.py   ``learner``: theta vs phi step, TAMPO's l_k share of a step
    trl.py       ``trl``: seconds per GRPO step, this system vs TRL's GRPOTrainer
    pipeline.py  ``pipeline``: seconds per step, synchronous vs one step off-policy
    gpu.py       ``gpu``: GPU-sized random-weight models (torch + transformers only)

Adding a benchmark: a module with ``add_<name>_parser(sub)`` (its options and
``set_defaults(func=bench_<name>)``) and ``bench_<name>(args) -> dict`` that returns
``{"benchmark", "machine", "settings", ...results}``; list the adder in ``SUBCOMMANDS``
(``__main__.py``). Heavy imports (torch, transformers, vllm, trl) stay inside ``bench_<name>`` so
that ``--help`` and the harness import nothing heavy. Only ``__main__.py`` imports the subcommand
modules (``tests/test_imports_on_cpu.py`` checks it).
"""
