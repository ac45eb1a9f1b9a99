"""Export a checkpoint as a Hugging Face model folder with its temperature policy: the entry point.

    python -m launch.export runs/introllm/2026-12-01_10-00-00 --out exported/introllm
    python -m launch.export runs/x/checkpoints/step_000120 --out exported/x --base /models/Qwen3

A run folder exports its newest checkpoint that verifies; a checkpoint folder, that one. The
folder's layout and its ``temperature_policy.json`` are described in ``launch.model_export``.
Every run also writes ``<run folder>/final_model/`` the same way at its end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a run folder or a checkpoint folder (step_NNNNNN)")
    parser.add_argument("--out", required=True, help="the model folder to write (replaced)")
    parser.add_argument("--base", default=None,
                        help="the base model folder (config, tokenizer); default: the run's")
    args = parser.parse_args(argv)

    from launch.checkpoint import find_checkpoint
    from launch.config import ConfigError
    from launch.model_export import export_checkpoint

    try:
        ckpt = find_checkpoint(Path(args.source), str(args.source))
        if ckpt is None:
            raise ConfigError(f"{args.source} has no checkpoint to export")
        out = export_checkpoint(ckpt, Path(args.out), args.base)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"launch.export: {e}", file=sys.stderr)
        return 2
    print(f"exported {ckpt} -> {out.resolve()}")
    print(f"  transformers: AutoModelForCausalLM.from_pretrained({str(out)!r})")
    print(f"  evaluate:     python -m launch.evaluate +experiment=... model.path={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
