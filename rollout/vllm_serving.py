"""Serving mode: the per-token temperature inside vLLM's OpenAI server, where no rollout engine
sends RPCs (the command line is ``python -m launch.serve``, which documents what a request's
sampling parameters mean there).

The server's vLLM is started with ``--logits-processors rollout.vllm_serving:<class>`` (the row
source of its model runner, ``row_source_fqcn``) and ``$TEMPO_SERVE_POLICY`` (``policy_env``: the
strategy's spec, the seed of its RNG, the base τ). In every worker process vLLM builds that row
source, a subclass of the rollout engine's (``rollout.vllm_rows``), which

* offers the Tempo model the binding the engine's ``tempo_bind`` RPC would make, by the same code
  (``rollout.vllm_worker.bind_runtime``; ``rollout.vllm_model.offer_binding``: the model takes it
  at its first ``compute_logits``), with a runtime that keeps only the last records of its most
  recent requests (``keep_requests``): nothing collects them, memory stays bounded;
* gives every request its own key (a fresh ``extra_args`` dict on its ``SamplingParams``, so a
  request that comes back after preemption as the same object keeps its key and its τ_{t-1}),
  the strategy's base τ, and greedy = temperature 0 (τ = 1, as the engine's greedy decoding);
* refuses, in the server's front end (``validate_params`` runs there for every request, as a 400
  reply), what a per-token temperature cannot serve: prompt log-probs (``echo`` with logprobs).
"""

from __future__ import annotations

import itertools
import json
import os

from rollout.vllm_model import offer_binding
from rollout.vllm_rows import BASE_TAU, GREEDY, KEY, V1RowTracker, V2RowSource
from rollout.vllm_worker import bind_runtime

POLICY_ENV = "TEMPO_SERVE_POLICY"
GREEDY_BELOW = 1e-5
"""a request temperature below this is greedy decoding (vLLM's own _SAMPLING_EPS)"""
MIN_KEEP = 4096
"""requests whose last records a serving runtime keeps, at least (4 x max_num_seqs if more):
a request preempted and resumed within that many newer requests keeps its τ_{t-1}"""


def policy_env(spec: dict, seed: int, base_tau: float) -> str:
    """The value of ``$TEMPO_SERVE_POLICY`` for the server's processes."""
    return json.dumps({"strategy": spec, "seed": int(seed), "base_tau": float(base_tau)})


def read_policy_env() -> dict:
    raw = os.environ.get(POLICY_ENV)
    if not raw:
        raise RuntimeError(f"${POLICY_ENV} is not set: the serving row sources of "
                           f"rollout.vllm_serving run under python -m launch.serve, which sets it")
    return json.loads(raw)


class _Serving:
    """What the serving row sources add to the engine's (mixed in before them)."""

    def _serve(self, vllm_config) -> None:
        policy = read_policy_env()
        self._key_prefix = f"serve{os.getpid()}-"
        self._next_id = itertools.count()
        self._base_tau = float(policy["base_tau"])
        keep = max(MIN_KEEP, 4 * int(vllm_config.scheduler_config.max_num_seqs))
        offer_binding(vllm_config, lambda model: bind_runtime(
            model, self, policy["strategy"], int(policy["seed"]), keep_requests=keep))

    def request_of(self, params):
        args = params.extra_args or {}
        key = args.get(KEY)
        if not (isinstance(key, str) and key.startswith(self._key_prefix)):  # new here
            # a fresh dict: the request's copies (n > 1) may share the one the client sent
            params.extra_args = {**args, KEY: f"{self._key_prefix}{next(self._next_id)}",
                                 BASE_TAU: self._base_tau,
                                 GREEDY: params.temperature < GREEDY_BELOW}
        return super().request_of(params)

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        own = sorted(set(sampling_params.extra_args or {}) & {KEY, BASE_TAU, GREEDY})
        if own:  # the server keys every request itself; a client's key could join another's
            raise ValueError(f"extra_args {own} are set by the server for every request; send "
                             f"the request without them")
        if sampling_params.prompt_logprobs is not None:
            raise ValueError(
                f"prompt_logprobs={sampling_params.prompt_logprobs} (echo with logprobs) is not "
                f"served with per-token temperatures: the head picks a temperature for generated "
                f"tokens only; send the request without echo/prompt_logprobs")
        super().validate_params(sampling_params)


class ServingV1RowTracker(_Serving, V1RowTracker):
    """Model runner V1 (vLLM's choice on CPU)."""

    def __init__(self, vllm_config, device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self._serve(vllm_config)


class ServingV2RowSource(_Serving, V2RowSource):
    """Model runner V2."""

    def __init__(self, vllm_config, req_states) -> None:
        super().__init__(vllm_config, req_states)
        self._serve(vllm_config)


def row_source_fqcn(use_v2: bool) -> str:
    """``--logits-processors`` value for the model runner vLLM runs."""
    cls = ServingV2RowSource if use_v2 else ServingV1RowTracker
    return f"{__name__}:{cls.__name__}"
