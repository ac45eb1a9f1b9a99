"""Row attribution: which request, and which response position, each row of logits is.

The model's per-token temperature needs, for every row of logits vLLM samples from, the request it
belongs to (its base τ, its key for the records) and the position of the token it is about to
sample (to look up τ_{t-1} for IntroLLM's "keep" branch and to record τ_t at t). How a runner
lays out its rows is runner-specific, so it lives behind one small interface, a *row source*:

    source.divides_in_compute_logits: bool   # where the per-token division happens (see below)
    source.rows(...) -> list[Row] | None     # None: not a real decoding batch (warm-up)
    source.readded: int                      # requests re-entering with tokens (a counter)

with one implementation per vLLM model runner. Both are vLLM logits processors, given to
``LLM(logits_processors=[...])``; neither edits logits by itself.

**Model runner V1** (``V1RowTracker``, a V1 ``LogitsProcessor``). The V1 runner calls every
logits processor's ``update_state(batch_update)`` from ``_update_states`` →
``input_batch.refresh_metadata()`` *before* the forward pass of a step (after ``condense()`` and
the attention backend's reorder, whose moves are part of the update), then
``model.compute_logits`` after it. So when ``compute_logits`` runs, the tracker already describes
exactly the rows of this step, and the division by τ happens there (vLLM's default raw log-probs
are then those of z / τ). Each added request brings its ``SamplingParams`` (our ``extra_args``:
key, base τ, greedy) and a live reference to its output-token list: ``len(output_ids)`` is the
position of the token the row samples.

**Model runner V2** (``V2RowSource``, a V2 ``LogitsProcessor``). V2 calls ``compute_logits`` with
the sampled rows' hidden states only, and tells a processor the row layout in
``apply(logits, ctx)``: ``ctx.expanded_idx_mapping`` (row -> persistent request slot) and
``ctx.pos`` (the sequence position of the row's last input token). The slot's request arrives
in ``add_request(slot, params)``, after the runner wrote the slot's ``prompt_len`` and
``prefill_len``. So under V2 ``compute_logits`` only stashes the hidden states, and the division
by τ happens in ``apply`` (which V2 runs before its own temperature, on an fp32 copy of the
logits); the engine asks V2 for ``logprobs_mode="processed_logprobs"`` so that the returned
log-probs are those of z / τ. The response position of a row is
``max(pos + 1, prefill_len) - prompt_len``.

Why positions stay right (both runners):

* chunked prefill: a partial prefill chunk also gets a logits row, whose sampled token vLLM
  discards. Its position is that of the token the final chunk will sample (V1: the output list
  has not grown; V2: ``pos + 1 < prefill_len``), so the final chunk's record overwrites the
  partial one (records are keyed by position, later writes win).
* preemption (recompute): the request leaves the batch and comes back later (added again, with
  prompt + generated tokens to re-prefill); its next row is at the number of tokens generated so
  far; records of earlier positions are kept (they live in the worker's record store, keyed by
  our request key, not by vLLM's batch slot).
* τ_{t-1} is known when row t is divided: position t exists only after token t-1 was sampled
  and accepted, i.e. after the step that recorded τ_{t-1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rollout.vllm_compat import import_vllm

import_vllm()  # version check before touching vLLM internals

from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor.interface import (  # noqa: E402
    LogitsProcessor as V2LogitsProcessor,
)

KEY = "tempo_key"
"""SamplingParams.extra_args key: the rollout engine's id of the response"""
BASE_TAU = "tempo_base_tau"
"""SamplingParams.extra_args key: the per-request temperature the strategy planned"""
GREEDY = "tempo_greedy"
"""SamplingParams.extra_args key: True for greedy decoding (τ = 1 is applied and recorded)"""


@dataclass
class Row:
    """What one logits row belongs to."""

    key: str | None
    """the engine's response key; None for a request the engine did not submit"""
    base_tau: float
    greedy: bool
    position: int
    """0-based index, within the response, of the token this row samples"""


@dataclass
class _Request:
    """A request's constant part, as a logits processor learns it when the request is added."""

    key: str | None
    base_tau: float
    greedy: bool

    @classmethod
    def from_params(cls, params) -> _Request:
        args = params.extra_args or {}
        return cls(key=args.get(KEY), base_tau=float(args.get(BASE_TAU, 1.0)),
                   greedy=bool(args.get(GREEDY, False)))


def validate_params(sampling_params) -> None:
    args = sampling_params.extra_args or {}
    if KEY in args and not float(args.get(BASE_TAU, 1.0)) > 0:
        raise ValueError(f"extra_args[{BASE_TAU!r}] ({args.get(BASE_TAU)}) must be > 0")


class RowMismatch(RuntimeError):
    """The logits rows do not match what the row source knows of the batch."""


class _RequestsFromParams:
    """How a row source reads an added request: from the engine's ``extra_args``.
    (``rollout.vllm_serving`` overrides it for requests that arrive without them.)"""

    def request_of(self, params) -> _Request:
        return _Request.from_params(params)


class V1RowTracker(_RequestsFromParams, LogitsProcessor):
    """Follows the V1 persistent batch through logits-processor batch updates; never edits
    logits."""

    divides_in_compute_logits = True

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self._rows: dict[int, tuple[_Request, list[int]]] = {}  # slot -> request, live output ids
        self.batch_size = 0
        self.readded = 0
        """requests (re-)entering the batch with tokens already generated: resumed after
        preemption, or back after a step in which they were not scheduled (a counter for stats)"""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate_params(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return True  # apply() returns the logits unchanged

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # documented order: removed, added, moved
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            self.readded += bool(output_ids)
            self._rows[index] = (self.request_of(params), output_ids)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if row_b is not None and direction == MoveDirectionality.SWAP:
                self._rows[a] = row_b
        self.batch_size = batch_update.batch_size

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def rows(self, n: int) -> list[Row] | None:
        """The n rows of this step's compute_logits; None for a batch with no requests (warm-up)."""
        if self.batch_size == 0 or not self._rows:
            return None
        if n != self.batch_size:
            raise RowMismatch(f"compute_logits got {n} rows but the V1 batch holds "
                              f"{self.batch_size} requests (speculative decoding or prompt "
                              f"logprobs are not supported with per-token temperatures)")
        missing = [i for i in range(n) if i not in self._rows]
        if missing:
            raise RowMismatch(f"batch slots {missing[:8]} have no request after the batch update")
        out = []
        for i in range(n):
            req, output_ids = self._rows[i]
            out.append(Row(req.key, req.base_tau, req.greedy, len(output_ids)))
        return out


class V2RowSource(_RequestsFromParams, V2LogitsProcessor):
    """Model runner V2: attributes rows in ``apply`` and divides them there (see module doc)."""

    divides_in_compute_logits = False

    def __init__(self, vllm_config, req_states) -> None:
        self._lens = req_states  # prompt_len / prefill_len per slot (.np: the host source of truth)
        self._slots: dict[int, tuple[_Request, int, int]] = {}  # slot -> request, prompt, prefill
        self.readded = 0
        self.runtime = None
        """the worker's ``TempoRuntime`` (``rollout.vllm_model``), bound by ``tempo_bind``"""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate_params(sampling_params)

    def add_request(self, req_idx: int, sampling_params) -> bool:
        prompt = int(self._lens.prompt_len.np[req_idx])
        prefill = int(self._lens.prefill_len.np[req_idx])
        self.readded += prefill > prompt
        self._slots[req_idx] = (self.request_of(sampling_params), prompt, prefill)
        return True  # V2 skips apply() for batches in which no processor asked for it

    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        runtime = self.runtime
        if runtime is None:
            return logits
        return runtime.apply_rows(logits, lambda: self.rows(ctx, logits.shape[0]))

    def rows(self, ctx, n: int) -> list[Row] | None:
        slots = ctx.expanded_idx_mapping.tolist()
        if len(slots) != n or len(slots) != len(ctx.idx_mapping_np):
            raise RowMismatch(f"V2 apply got {n} logits rows for {len(ctx.idx_mapping_np)} "
                              f"requests (speculative decoding is not supported with per-token "
                              f"temperatures)")
        if any(s not in self._slots for s in slots):
            return None  # a dummy (warm-up) batch over slots no request was added to
        out = []
        for slot, pos in zip(slots, ctx.pos.tolist()):
            req, prompt, prefill = self._slots[slot]
            out.append(Row(req.key, req.base_tau, req.greedy, max(pos + 1, prefill) - prompt))
        return out


def find_row_source(model_runner):
    """The row source living in a model runner: the processor vLLM built from logits_processors."""
    sampler = getattr(model_runner, "sampler", None)
    if sampler is not None and hasattr(sampler, "logits_processors"):  # model runner V2
        procs = sampler.logits_processors
    else:
        procs = getattr(getattr(getattr(model_runner, "input_batch", None), "logitsprocs", None),
                        "all", None)
    for proc in procs or ():
        if isinstance(proc, (V1RowTracker, V2RowSource)):
            return proc
    raise RuntimeError(f"no Tempo row source among the logits processors of "
                       f"{type(model_runner).__name__}; build the LLM with "
                       f"logits_processors=[row_source_class(runner)] (VLLMEngine does)")


def row_source_class(use_v2: bool) -> type:
    """The logits processor class to give ``LLM(logits_processors=...)`` for this runner."""
    return V2RowSource if use_v2 else V1RowTracker
