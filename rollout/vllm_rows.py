"""Row attribution: which request, and which response position, each row of ``compute_logits`` is.

``compute_logits(hidden)`` gets one row per request of the running batch (V1 runner, no
speculative decoding), in the order of the runner's persistent batch. The model's per-token
temperature needs, for row r, the request it belongs to (its base τ, its key for the records) and
the position of the token it is about to sample (to look up τ_{t-1} for IntroLLM's "keep" branch and
to record τ_t at t). That mapping is runner-specific, so it lives behind one small interface:

    RowSource.rows(n) -> list[RowRef] | None       # None: not a real decoding batch
    RowSource.readded: int                         # requests re-entering with tokens (stats)

V1 (today): ``V1RowTracker``, a vLLM V1 ``LogitsProcessor`` given to ``LLM(logits_processors=...)``.
The V1 runner calls every logits processor's ``update_state(batch_update)`` from
``_update_states`` → ``input_batch.refresh_metadata()`` *before* the forward pass of a step
(after ``condense()`` and the attention backend's reorder, whose moves are part of the update),
then ``model.compute_logits`` after it, then ``apply(logits)`` in the sampler. So when
``compute_logits`` runs, the tracker already describes exactly the rows of this step. Each
added request brings its ``SamplingParams`` (our ``extra_args``: key, base τ, greedy) and a live
reference to its output-token list, so ``len(output_ids)`` is the number of tokens generated so
far = the position of the token this row samples.

Why positions stay right:
* chunked prefill: a partial prefill chunk also gets a logits row, whose sampled token vLLM
  discards; its output list does not grow, so the final chunk's row has the same position and its
  record overwrites the partial one (records are keyed by position, later writes win).
* preemption (recompute): the request leaves the batch (removed) and comes back later (added
  again, same ``CachedRequestState`` and output list); it re-prefills prompt + generated tokens and
  its next row is at position ``len(output_ids)``; records of earlier positions are kept (they
  live in the worker's record store, keyed by our request key, not by vLLM's batch slot).
* τ_{t-1} is known when row t is divided: position t exists only after token t-1 was sampled
  and accepted, i.e. after the step whose ``compute_logits`` recorded τ_{t-1}.

V2 (GPU builds' default runner in 0.32) uses another logits-processor interface
(``add_request(req_idx, params)``, ``apply(logits, ctx)`` with a row→slot mapping and positions)
and rejects V1 processors. ``rollout.vllm_compat.configure_env`` pins the V1 runner
(``VLLM_USE_V2_MODEL_RUNNER=0``, which 0.32 honours on CPU and GPU builds alike). A V2 row source
would be a V2 logits processor that keeps req_idx -> RowRef in ``add_request`` and publishes the
row mapping before ``compute_logits``; if V2 exposes it only in ``apply``, the division by τ moves
into that processor and the head's forward stays in ``compute_logits``, stashed per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout.vllm_compat import import_vllm

import_vllm()  # version check before touching vLLM internals

from vllm.v1.sample.logits_processor import (  # noqa: E402
    BatchUpdate, LogitsProcessor, MoveDirectionality)

KEY = "tempo_key"
"""SamplingParams.extra_args key: the rollout engine's id of the response"""
BASE_TAU = "tempo_base_tau"
"""SamplingParams.extra_args key: the per-request temperature the strategy planned"""
GREEDY = "tempo_greedy"
"""SamplingParams.extra_args key: True for greedy decoding (τ = 1 is applied and recorded)"""


@dataclass
class RowRef:
    """What one logits row belongs to."""

    key: str | None
    """the engine's response key; None for a request the engine did not submit"""
    base_tau: float
    greedy: bool
    output_ids: list[int]
    """live reference to the request's generated tokens: len() = position being sampled"""

    @property
    def position(self) -> int:
        return len(self.output_ids)


class RowMismatch(RuntimeError):
    """compute_logits got a different number of rows than the runner's batch holds."""


class V1RowTracker(LogitsProcessor):
    """Follows the V1 persistent batch through logits-processor batch updates; never edits logits."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self._rows: dict[int, RowRef] = {}  # batch slot -> row
        self.batch_size = 0
        self.readded = 0
        """requests (re-)entering the batch with tokens already generated: resumed after
        preemption, or back after a step in which they were not scheduled (a counter for stats)"""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        args = sampling_params.extra_args or {}
        if KEY in args and not float(args.get(BASE_TAU, 1.0)) > 0:
            raise ValueError(f"extra_args[{BASE_TAU!r}] ({args.get(BASE_TAU)}) must be > 0")

    def is_argmax_invariant(self) -> bool:
        return True  # apply() returns the logits unchanged

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # documented order: removed, added, moved
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            args = params.extra_args or {}
            self.readded += bool(output_ids)
            self._rows[index] = RowRef(key=args.get(KEY), base_tau=float(args.get(BASE_TAU, 1.0)),
                                       greedy=bool(args.get(GREEDY, False)), output_ids=output_ids)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if row_b is not None and direction == MoveDirectionality.SWAP:
                self._rows[a] = row_b
        self.batch_size = batch_update.batch_size

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def rows(self, n: int) -> list[RowRef] | None:
        """The n rows of this step's compute_logits; None for a batch with no requests (warm-up)."""
        if self.batch_size == 0 or not self._rows:
            return None
        if n != self.batch_size:
            raise RowMismatch(f"compute_logits got {n} rows but the V1 batch holds {self.batch_size} "
                              f"requests (speculative decoding or prompt logprobs are not supported "
                              f"with per-token temperatures)")
        missing = [i for i in range(n) if i not in self._rows]
        if missing:
            raise RowMismatch(f"batch slots {missing[:8]} have no request after the batch update")
        return [self._rows[i] for i in range(n)]


def find_row_source(model_runner) -> V1RowTracker:
    """The row source living in a V1 model runner (the tracker vLLM built from logits_processors)."""
    procs = getattr(getattr(model_runner, "input_batch", None), "logitsprocs", None)
    if procs is None:  # V2 runners have no V1 input batch with logits processors
        raise RuntimeError(
            "vLLM runs its model runner V2, which rollout.vllm_rows does not attribute rows for; "
            "run with VLLM_USE_V2_MODEL_RUNNER=0 (the V1 runner; rollout.vllm_compat.configure_env "
            "sets it unless the environment already does)")
    for proc in procs.all:
        if isinstance(proc, V1RowTracker):
            return proc
    raise RuntimeError("no V1RowTracker among the engine's logits processors; build the LLM with "
                       "logits_processors=[V1RowTracker] (VLLMEngine does)")
