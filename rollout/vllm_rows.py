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

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

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
class RowBatch:
    """What this step's N logits rows belong to, as tensors on the logits' device."""

    slot: Tensor
    """(N,) long: the row's record slot (``RecordSlots``); 0 for a request the engine did not
    submit (its records go to a scratch row nobody reads)"""
    position: Tensor
    """(N,) long: 0-based index, within the response, of the token this row samples"""
    base_tau: Tensor
    """(N,) float32: the per-request temperature the strategy planned"""
    greedy: Tensor
    """(N,) bool: greedy decoding (τ = 1 is applied and recorded)"""
    continues: Tensor
    """(N,) bool: a request of the engine's past its first token (it reads its τ_{t-1})"""


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


class RecordSlots:
    """Which row of the runtime's record tensors each request writes: one slot per request key,
    kept while the request is preempted and resumed, so its records and τ_{t-1} survive.

    Slot 0 is the scratch row of requests the engine did not submit (key None). The rollout
    engine starts every generate() afresh (``reset``; slots are never reused within one).
    A serving runtime (``keep``: at most that many keys) recycles the slots of the requests that
    left the batch longest ago (``park``); their rows are queued in ``evicted`` for the runtime
    to clear before they are read again. Everything here happens on request events (added,
    removed), never per row per step.
    """

    def __init__(self, keep: int | None = None):
        self.keep = keep
        self.reset()

    def reset(self) -> None:
        self._slot: dict[str, int] = {}
        self._parked: OrderedDict[str, None] = OrderedDict()  # left the batch, oldest first
        self.size = 1
        """record rows in use (slot 0 included): the runtime's record tensors hold >= this"""
        self.evicted: list[int] = []
        """recycled slots whose rows still hold their last occupant's records"""

    def slot_of(self, key: str | None) -> int:
        """``key``'s slot (allocated on first sight; slot 0 for None)."""
        if key is None:
            return 0
        slot = self._slot.get(key)
        if slot is not None:
            self._parked.pop(key, None)
            return slot
        if self.keep is not None and len(self._slot) >= self.keep and self._parked:
            oldest, _ = self._parked.popitem(last=False)
            slot = self._slot.pop(oldest)
            self.evicted.append(slot)
        else:
            slot, self.size = self.size, self.size + 1
        self._slot[key] = slot
        return slot

    def get(self, key: str) -> int | None:
        return self._slot.get(key)

    def park(self, key: str | None) -> None:
        """``key`` left the batch (finished, or preempted): a serving runtime may recycle it."""
        if self.keep is not None and key is not None and key in self._slot:
            self._parked[key] = None
            self._parked.move_to_end(key)


class _Staging:
    """Host -> device copies of a step's small row arrays without making the host wait for the
    device: on CUDA through a ring of pinned buffers (a pageable copy would first wait for the
    stream); on CPU the array itself."""

    RING = 4

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._ring: list[Tensor] = []
        self._next = 0

    def to_device(self, *host: np.ndarray) -> list[Tensor]:
        """The arrays as tensors on the device (on the CPU: sharing their memory)."""
        src = [torch.from_numpy(a) for a in host]
        if self.device.type != "cuda":
            return [t.to(self.device) for t in src]  # the CPU: the same tensors
        n = sum(t.numel() * t.element_size() for t in src)
        if not self._ring or self._ring[0].numel() < n:
            self._ring = [torch.empty(2 * n, dtype=torch.uint8, pin_memory=True)
                          for _ in range(self.RING)]
        buf, out, at = self._ring[self._next], [], 0
        self._next = (self._next + 1) % self.RING
        for t in src:  # packed into one pinned buffer, one copy to the device
            size = t.numel() * t.element_size()
            buf[at:at + size].view(t.dtype).view(t.shape).copy_(t)
            at += size
        dev = buf[:at].to(self.device, non_blocking=True)
        at = 0
        for t in src:
            size = t.numel() * t.element_size()
            out.append(dev[at:at + size].view(t.dtype).view(t.shape))
            at += size
        return out


class _RowSource:
    """What both row sources share: reading an added request (from the engine's ``extra_args``;
    ``rollout.vllm_serving`` overrides ``request_of`` for requests that arrive without them), the
    request's record slot, and the readded counter."""

    def _init_source(self) -> None:
        self.slots = RecordSlots()
        self.readded = 0
        """requests (re-)entering the batch with tokens already generated: resumed after
        preemption, or back after a step in which they were not scheduled (a counter for stats)"""

    def request_of(self, params) -> _Request:
        return _Request.from_params(params)


def _grown(array: np.ndarray, index: int, fill=0) -> np.ndarray:
    """``array`` long enough to hold ``index`` (doubling), new entries ``fill``."""
    if index < len(array):
        return array
    out = np.full(max(2 * len(array), index + 1), fill, dtype=array.dtype)
    out[:len(array)] = array
    return out


class V1RowTracker(_RowSource, LogitsProcessor):
    """Follows the V1 persistent batch through logits-processor batch updates; never edits
    logits.

    Per batch slot it keeps, in host arrays updated only on batch updates, the request's record
    slot, base τ and greedy flag, plus the live output-token list vLLM gave it. A step's rows
    are those arrays' first N entries and the lists' lengths (one C-level pass, no Python code
    per row), copied to the device in one transfer (none on the CPU).
    """

    divides_in_compute_logits = True

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self._init_source()
        self._staging = _Staging(device)
        size = 256
        self._keys: list[str | None] = [None] * size
        self._outputs: list[list[int] | None] = [None] * size  # live output ids per batch slot
        self._slot = np.zeros(size, dtype=np.int64)  # the request's record slot
        self._base = np.zeros(size, dtype=np.float32)
        self._greedy = np.zeros(size, dtype=bool)
        self._present = np.zeros(size, dtype=bool)
        self.batch_size = 0

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
            self._clear(index)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            self._clear(index)  # a slot reused in the same step: its occupant left
            self._grow(index)
            req = self.request_of(params)
            self.readded += bool(output_ids)
            self._keys[index], self._outputs[index] = req.key, output_ids
            self._slot[index] = self.slots.slot_of(req.key)
            self._base[index], self._greedy[index] = req.base_tau, req.greedy
            self._present[index] = True
        for a, b, direction in batch_update.moved:
            self._grow(max(a, b))
            if direction == MoveDirectionality.SWAP:
                self._swap(a, b)
            else:  # a -> b, a empty afterwards
                self._clear(b)
                self._swap(a, b)
        self.batch_size = batch_update.batch_size

    def _grow(self, index: int) -> None:
        if index >= len(self._present):
            extra = max(len(self._present), index + 1 - len(self._present))
            self._keys += [None] * extra
            self._outputs += [None] * extra
            self._slot, self._base = _grown(self._slot, index), _grown(self._base, index)
            self._greedy = _grown(self._greedy, index, False)
            self._present = _grown(self._present, index, False)

    def _clear(self, index: int) -> None:
        if index < len(self._present) and self._present[index]:
            self.slots.park(self._keys[index])
            self._keys[index] = self._outputs[index] = None
            self._present[index] = False

    def _swap(self, a: int, b: int) -> None:
        for lst in (self._keys, self._outputs):
            lst[a], lst[b] = lst[b], lst[a]
        for arr in (self._slot, self._base, self._greedy, self._present):
            arr[[a, b]] = arr[[b, a]]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def rows(self, n: int) -> RowBatch | None:
        """The n rows of this step's compute_logits; None for a batch with no requests (warm-up)."""
        if self.batch_size == 0 or not self._present.any():
            return None
        if n != self.batch_size:
            raise RowMismatch(f"compute_logits got {n} rows but the V1 batch holds "
                              f"{self.batch_size} requests (speculative decoding or prompt "
                              f"logprobs are not supported with per-token temperatures)")
        if not self._present[:n].all():
            missing = np.flatnonzero(~self._present[:n])[:8].tolist()
            raise RowMismatch(f"batch slots {missing} have no request after the batch update")
        slot = self._slot[:n]
        pos = np.fromiter(map(len, self._outputs[:n]), dtype=np.int64, count=n)
        t = self._staging.to_device(slot, pos, self._base[:n], self._greedy[:n],
                                    (slot > 0) & (pos > 0))
        return RowBatch(slot=t[0], position=t[1], base_tau=t[2], greedy=t[3], continues=t[4])


class V2RowSource(_RowSource, V2LogitsProcessor):
    """Model runner V2: attributes rows in ``apply`` and divides them there (see module doc).

    Per persistent request slot it keeps, in device tables written when a request is added
    (scalar writes, no transfer), the request's record slot, base τ, greedy flag, prompt length
    and prefill length; a step gathers its rows from that table by ``ctx.expanded_idx_mapping``
    and computes their positions from ``ctx.pos``, on the device.
    """

    divides_in_compute_logits = False

    def __init__(self, vllm_config, req_states) -> None:
        self._init_source()
        self._lens = req_states  # prompt_len / prefill_len per slot (.np: the host source of truth)
        self._device = torch.device(getattr(req_states, "device", "cpu"))
        self._keys: list[str | None] = []
        self._known = np.zeros(0, dtype=bool)  # host: slots a request was added to
        self._ints = torch.zeros(0, 3, dtype=torch.long, device=self._device)
        """(slots, 3): record slot, prompt length, prefill length"""
        self._base = torch.zeros(0, dtype=torch.float32, device=self._device)
        self._greedy = torch.zeros(0, dtype=torch.bool, device=self._device)
        self.runtime = None
        """the worker's ``TempoRuntime`` (``rollout.vllm_model``), bound by ``tempo_bind``"""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        validate_params(sampling_params)

    def add_request(self, req_idx: int, sampling_params) -> bool:
        prompt = int(self._lens.prompt_len.np[req_idx])
        prefill = int(self._lens.prefill_len.np[req_idx])
        self.readded += prefill > prompt
        if req_idx >= len(self._known):
            size = max(2 * len(self._known), req_idx + 1, 8)
            self._known = _grown(self._known, size - 1, False)
            self._keys += [None] * (size - len(self._keys))
            self._ints, self._base, self._greedy = (
                torch.cat([t, t.new_zeros((size - len(t), *t.shape[1:]))])
                for t in (self._ints, self._base, self._greedy))
        if self._known[req_idx]:  # the slot's previous occupant left the batch
            self.slots.park(self._keys[req_idx])
        req = self.request_of(sampling_params)
        ints = self._ints[req_idx]  # scalar fills on the device: no host -> device copy
        ints[0], ints[1], ints[2] = self.slots.slot_of(req.key), prompt, prefill
        self._base[req_idx], self._greedy[req_idx] = req.base_tau, req.greedy
        self._keys[req_idx], self._known[req_idx] = req.key, True
        return True  # V2 skips apply() for batches in which no processor asked for it

    def apply(self, logits: torch.Tensor, ctx) -> torch.Tensor:
        runtime = self.runtime
        if runtime is None:
            return logits
        return runtime.apply_rows(logits, lambda: self.rows(ctx, logits.shape[0]))

    def rows(self, ctx, n: int) -> RowBatch | None:
        slots = ctx.expanded_idx_mapping  # (N,) device
        if slots.shape[0] != n or len(ctx.idx_mapping_np) != n:
            raise RowMismatch(f"V2 apply got {n} logits rows for {len(ctx.idx_mapping_np)} "
                              f"requests (speculative decoding is not supported with per-token "
                              f"temperatures)")
        host = ctx.idx_mapping_np  # the same slots, on the host: checked without a device read
        if host.size and (host.max() >= len(self._known) or not self._known[host].all()):
            return None  # a dummy (warm-up) batch over slots no request was added to
        slots = slots.long()
        slot, prompt, prefill = self._ints[slots].unbind(1)  # (N,) each
        position = torch.maximum(ctx.pos.long() + 1, prefill) - prompt
        return RowBatch(slot=slot, position=position, base_tau=self._base[slots],
                        greedy=self._greedy[slots], continues=(slot > 0) & (position > 0))


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
