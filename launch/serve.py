"""python -m launch.serve DIR [--host 127.0.0.1] [--port 8000] [--kv-cache-gb 4]
[--temperature-mode sample|mean] [any vLLM server argument ...]

Serves an exported model folder (``python -m launch.export``, a run's ``final_model/``) with vLLM's
OpenAI-compatible server (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``,
``/health``), sampling every generated token at the temperature the folder's head picks: the
strategy of ``temperature_policy.json`` (e.g. IntroLLM with its τ range and temperature_mode, or
the mode given here) with the weights of ``temperature_head.safetensors``. Arguments this command
does not know go to vLLM's server unchanged (``vllm serve --help``); clients name the model DIR as
given, unless ``--served-model-name`` says otherwise.

What a request's sampling parameters mean for a head-owning model (the head's τ_t divides the
logits z_t inside the model, before vLLM's sampler sees them):

* ``temperature`` T multiplies the head's temperature: tokens are drawn from softmax(z_t / (τ_t T)).
  T = 1, the default when a request sends none, samples exactly as the model was trained (the
  server's defaults are vLLM's neutral ones, ``SAMPLING_DEFAULTS``, whatever the folder's
  generation_config.json holds; ``--override-generation-config`` changes them). T = 0 is greedy:
  argmax z_t, whatever the head says (τ = 1 is applied there, as in the engine's greedy decoding).
* ``top_p``, ``top_k``, ``min_p``, penalties, ``logit_bias``: honoured by vLLM on the head-tempered
  logits z_t / τ_t (top-k/top-p after the division by T too), as on a plain model's; training used
  none of them.
* ``logprobs`` are those of the distribution each token was drawn from (vLLM's
  ``processed_logprobs``, the only mode served): log_softmax(z_t / (τ_t T))[y_t], renormalised over
  what top-k/top-p keep; for greedy requests log_softmax(z_t)[y_t].
* ``seed`` fixes vLLM's token draws. The head's own draws (IntroLLM's gate, and its Beta draw in
  temperature_mode=sample) come from one server-wide generator seeded by vLLM's ``--seed``, so
  they depend on the other requests in flight; with temperature_mode=mean and a gate that fires,
  τ_t is a function of the hidden state alone.
* ``echo`` with logprobs (prompt log-probs) is refused with a 400 reply saying why.

vLLM runs as for the rollout engine (``rollout.vllm_engine``, ``rollout.vllm_compat``): the
Tempo<Arch> model class on an overlay of DIR (removed on exit), the model runner vLLM picks (V1 on
CPU) with its row source, eager mode (``--no-enforce-eager`` to change), worker processes spawned
(they register the class through the project's vLLM plugin), ``--kv-cache-gb`` GiB of CPU KV
cache. vLLM's API server always runs its engine core in a process of its own; the strategy is
bound there without RPCs (``rollout.vllm_serving``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from launch.model_export import read_policy

log = logging.getLogger("launch.serve")

SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                     "repetition_penalty": 1.0, "presence_penalty": 0.0,
                     "frequency_penalty": 0.0}
"""a request's defaults: vLLM's neutral values, i.e. the learned temperatures untouched (a base
model's generation_config.json, e.g. Qwen's temperature 0.7 / top_p 0.8, would otherwise apply)"""
LOGPROBS_MODE = "processed_logprobs"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launch.serve", allow_abbrev=False,
        description="Serve an exported model folder with vLLM's OpenAI server, sampling at the "
                    "per-token temperatures of its head. Other arguments go to vLLM's server "
                    "(vllm serve --help lists them).")
    p.add_argument("model", help="an exported folder (temperature_policy.json beside theta)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--kv-cache-gb", type=int,
                   default=int(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or 4),
                   help="CPU KV cache in GiB (ignored on GPU; default: "
                        "$VLLM_CPU_KVCACHE_SPACE, else 4)")
    p.add_argument("--temperature-mode", default=None,
                   help="serve the strategy in this mode (IntroLLM: sample | mean) instead of "
                        "the exported one")
    return p


def load_strategy(folder: Path, temperature_mode: str | None = None):
    """(the folder's head-owning strategy, its policy record); a clear error for anything else."""
    from meta.registry import strategy_from_spec
    from rollout.vllm_overlay import checkpoint_keys, has_head, read_config

    record = read_policy(folder)
    if record is None:
        raise SystemExit(f"{folder} has no temperature_policy.json: it is not an exported model "
                         f"folder (python -m launch.export RUN --out DIR writes one); a plain "
                         f"model folder is served by `vllm serve {folder}`")
    strategy = strategy_from_spec(record["strategy"])
    if not strategy.learns_head:
        temp = record.get("summary", {}).get("temperature")
        hint = f" --override-generation-config '{{\"temperature\": {temp}}}'" if temp else ""
        raise SystemExit(f"{folder} was trained with the {strategy.name} temperature strategy, "
                         f"which has no per-token head to serve; its model is plain: serve it "
                         f"with `vllm serve {folder}{hint}`")
    if temperature_mode is not None:
        if temperature_mode not in strategy.temperature_modes:
            raise SystemExit(f"--temperature-mode {temperature_mode} is not a mode of "
                             f"{strategy.name}; use one of {list(strategy.temperature_modes)}")
        strategy.set_temperature_mode(temperature_mode)
    if not has_head(checkpoint_keys(folder)):
        raise SystemExit(f"{folder} has no temperature-head weights ({record.get('head_file')}); "
                         f"export the checkpoint again")
    config = read_config(folder)
    hidden = int((config.get("text_config") or config)["hidden_size"])
    if strategy.head.fc1.in_features != hidden:
        raise SystemExit(f"the policy's head reads hidden size {strategy.head.fc1.in_features} "
                         f"but {folder}/config.json has hidden_size {hidden}; export again")
    return strategy, record


def _no_head():
    raise AssertionError("the exported folder has its head (checked by load_strategy)")


def vllm_argv(overlay: Path, folder: str, rest: list[str], host: str, port: int) -> list[str]:
    """vLLM's server arguments: our defaults first, so that the user's (``rest``) win."""
    return [str(overlay), "--tokenizer", folder, "--served-model-name", folder,
            "--enforce-eager", *rest, "--host", host, "--port", str(port)]


def configure(args: argparse.Namespace, use_v2: bool) -> None:
    """The settings serving needs, on vLLM's parsed arguments (whatever the user passed)."""
    from rollout.vllm_serving import row_source_fqcn

    if args.logprobs_mode not in ("raw_logprobs", LOGPROBS_MODE):
        raise SystemExit(f"--logprobs-mode {args.logprobs_mode} is not served: the log-probs "
                         f"are those of the distribution sampled from ({LOGPROBS_MODE}); drop it")
    if getattr(args, "speculative_config", None):
        raise SystemExit("speculative decoding is not served with per-token temperatures (the "
                         "head tempers only the sampled rows); drop --speculative-config")
    args.logprobs_mode = LOGPROBS_MODE
    args.logits_processors = list(args.logits_processors or []) + [row_source_fqcn(use_v2)]
    args.override_generation_config = {**SAMPLING_DEFAULTS,
                                       **(args.override_generation_config or {})}


def main(argv: list[str] | None = None) -> None:
    ours, rest = _parser().parse_known_args(argv)
    folder = Path(ours.model)
    strategy, record = load_strategy(folder, ours.temperature_mode)

    from rollout.vllm_compat import configure_env, import_vllm

    configure_env(ours.kv_cache_gb, runner="auto", engine_core="process")  # before vLLM reads it
    import_vllm()
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from rollout.vllm_engine import uses_v2_runner
    from rollout.vllm_model import register_architecture
    from rollout.vllm_overlay import build_overlay, checkpoint_keys, read_config
    from rollout.vllm_plugin import announce
    from rollout.vllm_serving import POLICY_ENV, policy_env

    arch = read_config(folder)["architectures"][0]
    tempo_arch = register_architecture(arch)
    announce(arch)  # the engine-core and worker processes register it too
    overlay, _ = build_overlay(folder, tempo_arch, checkpoint_keys(folder), _no_head)
    try:
        parser = make_arg_parser(FlexibleArgumentParser(prog="python -m launch.serve"))
        args = parser.parse_args(vllm_argv(overlay, ours.model, rest, ours.host, ours.port))
        args.model = args.model_tag
        configure_env(ours.kv_cache_gb, runner="auto", engine_core="process",
                      tensor_parallel_size=args.tensor_parallel_size)
        configure(args, uses_v2_runner("auto", vars(args)))
        validate_parsed_serve_args(args)
        seed = args.seed if args.seed is not None else 0
        os.environ[POLICY_ENV] = policy_env(
            strategy.spec(), seed, strategy.temperature_at(int(record["trained_steps"])))
        log.info("serving %s (%s, %s) at http://%s:%d/v1", folder, strategy.name,
                 strategy.temperature_summary(int(record["trained_steps"])), ours.host, ours.port)
        cli_env_setup()
        ServeSubcommand.cmd(args)
    finally:
        shutil.rmtree(overlay, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(sys.argv[1:])
