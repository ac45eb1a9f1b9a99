"""The per-token temperature inside vLLM: a model subclass that owns the temperature head and
divides each row of logits by its τ in ``compute_logits``.

``compute_logits(hidden)`` is the one place where the final post-norm hidden state of every sampled
row meets its logits. ``Tempo<Arch>`` (``tempo_model_class``) subclasses whatever vLLM class
serves the checkpoint's architecture (Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM, ...),
adds ``temperature_head`` (``meta.introllm.TemperatureHead``, fp32, weights ``temperature_head.*``
loaded with the checkpoint) and, once the worker has bound a ``TempoRuntime`` to it, does per step:

    logits = base.compute_logits(hidden)                         # (N, V) untempered
    rows   = row_source.rows(N)                  # (N,) tensors: record slot, position, base τ
    prev   = records[slot, position - 1, τ]                      # τ_{t-1}, on the device
    ctx    = RowContext(positions, prev, base_tau, step, hidden?, logits?)
    d      = strategy.select(ctx)                                # every strategy, same path
    records[slot, position] = (τ, c, z, log π_φ)                 # later writes win
    return logits / τ[:, None]                                   # fp32

all of it tensor operations on the logits' device: no Python code per row, no read of the
device on the host (a GPU's host stays ahead of it); the records leave the device once per
generate() (``TempoRuntime.collect``).

Requests are sent with temperature 1.0 and no top-k/top-p/penalties, so vLLM samples from
softmax(z / τ) and its returned sampled-token log-prob is log_softmax(z / τ)[y].

Two ways to bind a runtime: the rollout engine's ``tempo_bind`` RPC (``rollout.vllm_worker``), or,
in a server where no engine sends RPCs, a binding *offered* by the serving row source when vLLM
builds it (``offer_binding``, ``rollout.vllm_serving``) and taken by the model at its first
``compute_logits``. A serving runtime keeps only the last two records of at most
``keep_requests`` requests, since nothing collects them.

Dimension vocabulary: N rows in this step, d hidden size, V vocab.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import Tensor

from meta.base import RowContext, TemperatureStrategy
from meta.introllm import TemperatureHead
from rollout.vllm_overlay import HEAD_PREFIX  # temperature_head.fc1.weight, ...
from rollout.vllm_rows import RowMismatch

log = logging.getLogger(__name__)

ARCH_PREFIX = "Tempo"
"""registered architecture name = ARCH_PREFIX + the checkpoint's architecture"""

RECORD_FIELDS = ("tau", "gate", "z", "logp_phi")
"""the last axis of the record tensors: what was recorded for one generated token"""
ANOMALIES = ("bad_tau", "missing_prev")
"""what the device counts during a generate() (read once, by ``collect``), beside the rows
written twice at one position (partial prefill chunks, recomputation)"""


class TempoRuntime:
    """Worker-side state: the strategy, the row source, the RNG and the per-token records.

    The records live on the logits' device: ``records`` (R, L, 4) float32, row = a request's
    record slot (``rollout.vllm_rows.RecordSlots``), column = response position (modulo L),
    last axis ``RECORD_FIELDS``; NaN where nothing was recorded. A decode step reads τ_{t-1} from
    them, runs the strategy, divides the logits and writes its records with tensor operations
    only: no Python code per row and no read of the device on the host (anomalies are counted
    on the device too). ``collect`` takes the records off the device once per generate().
    """

    def __init__(self, rows, strategy: TemperatureStrategy, seed: int = 0, tp_group=None,
                 keep_requests: int | None = None, max_positions: int = 4096):
        self.rows = rows
        self.strategy = strategy
        self.tp_group = tp_group
        """vLLM's tensor-parallel group when it has > 1 rank: rank 0's decisions are broadcast,
        so every rank divides each row by the same τ (and records the same values)"""
        self.step = 0
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.keep_requests = keep_requests
        """None (the rollout engine): every record of up to ``max_positions`` positions until
        ``collect``; n (serving): the records at the last two positions (τ_{t-1} of the next row,
        also after a partial prefill chunk) of at most n requests, the slots of those that left
        the batch longest ago recycled (bounded memory, no collect)"""
        self.width = 2 if keep_requests is not None else int(max_positions)
        """L: positions a record row holds (a ring of 2 when serving)"""
        if keep_requests is not None:
            rows.slots.keep = keep_requests
        self.records: Tensor | None = None  # (R, L, 4), allocated on the first row's device
        self.counts: Tensor | None = None  # (len(ANOMALIES) + 1,) int64: anomalies, rewritten
        self.anomalies: dict[str, int] = {}
        """found on the host (row attribution, shapes), counted as they happen"""
        self.messages: list[str] = []
        self.select_s = 0.0
        """seconds in strategy.select during this generate() (host time: on GPU, launches)"""
        self._hidden: Tensor | None = None

    def begin(self, step: int, seed: int | None, seed_global: bool = False) -> None:
        """Start a generate() call: training step for schedules, fresh records, reseeded RNG.

        ``seed_global``: also reseed the process's torch RNG, which vLLM's sampler draws from for
        requests without a per-request seed (the engine uses that on CPU, see VLLMEngine.generate).
        """
        if seed is not None and seed_global:
            torch.manual_seed(seed)
        self.step = int(step)
        self.rows.slots.reset()
        self.records = self.counts = None  # made afresh at the first row (vLLM's inference mode)
        self.anomalies.clear()
        self.messages.clear()
        self.select_s = 0.0
        self.rows.readded = 0
        if seed is not None:
            self.seed = int(seed)
            self.generator = None  # recreated on the row device, seeded, at the first row

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.generator

    def _anomaly(self, name: str, message: str) -> None:
        self.anomalies[name] = self.anomalies.get(name, 0) + 1
        if len(self.messages) < 8:
            self.messages.append(message)
            if self.keep_requests is not None:  # serving: no generate() to raise it
                log.warning("per-token temperature: %s: %s", name, message)

    def _record_rows(self, device: torch.device) -> Tensor:
        """The record tensor, on ``device``, with a row for every record slot handed out
        (grown by doubling; checked on the host); rows of recycled slots cleared."""
        need = self.rows.slots.size
        rec = self.records
        if rec is None or rec.device != device or rec.shape[0] < need:
            rows = max(need, 2 * (0 if rec is None else rec.shape[0]), 64)
            grown = torch.full((rows, self.width, len(RECORD_FIELDS)), float("nan"),
                               dtype=torch.float32, device=device)
            if rec is not None:
                grown[:rec.shape[0]] = rec.to(device)
            self.records = rec = grown
            if self.counts is None or self.counts.device != device:
                counts = torch.zeros(len(ANOMALIES) + 1, dtype=torch.int64, device=device)
                self.counts = counts if self.counts is None else counts + self.counts.to(device)
        evicted = self.rows.slots.evicted
        while evicted:  # serving only, one per recycled request: scalar-indexed fills
            rec[evicted.pop()].fill_(float("nan"))
        return rec

    def on_compute_logits(self, hidden: Tensor, logits: Tensor) -> Tensor:
        """``compute_logits``: divide here (runner V1), or stash the hidden states for the row
        source's ``apply`` that follows in the same step (runner V2)."""
        if self.rows.divides_in_compute_logits:
            return self.apply_rows(logits, lambda: self.rows.rows(logits.shape[0]), hidden)
        self._hidden = hidden
        return logits

    def apply_rows(self, logits: Tensor, rows_fn, hidden: Tensor | None = None) -> Tensor:
        """logits (N, V) untempered -> (N, V) fp32 logits / τ; records each row.

        ``rows_fn()`` gives the N rows (``rollout.vllm_rows.RowBatch``) or None for a batch with
        no requests behind it; ``hidden`` (N, d) defaults to the states stashed by
        ``on_compute_logits``. Tensor operations only from here on (see the class docstring).
        """
        n = logits.shape[0]
        try:
            rows = rows_fn()
        except RowMismatch as e:  # never crash the engine step: generate() raises afterwards
            self._anomaly("row_mismatch", str(e))
            return logits
        if rows is None:  # warm-up / profiling batch: no requests behind these rows
            return logits
        s = self.strategy
        if hidden is None:
            hidden, self._hidden = self._hidden, None
            if s.needs_hidden and (hidden is None or hidden.shape[0] != n):
                stashed = None if hidden is None else hidden.shape[0]
                self._anomaly("hidden_mismatch", f"{n} logits rows but the hidden states stashed "
                              f"by compute_logits have {stashed}")
                return logits
        device = logits.device
        rec = self._record_rows(device)
        w = self.width
        slot, pos, base = rows.slot, rows.position, rows.base_tau  # (N,) each
        prev = rec[slot, (pos - 1) % w, 0]  # (N,) τ_{t-1} as recorded; NaN: none
        recorded = prev == prev  # not NaN
        use_prev = rows.continues & recorded
        prev = torch.where(use_prev, prev, base)
        ctx = RowContext(positions=pos, prev_tau=prev, base_tau=base, step=self.step,
                         hidden=hidden if s.needs_hidden else None,
                         logits=logits if s.needs_logits else None,
                         generator=self._generator(device))
        t0 = time.perf_counter()
        d = s.select(ctx)
        self.select_s += time.perf_counter() - t0
        tau = d.tau.to(device=device, dtype=torch.float32).reshape(n)  # (N,)
        ok = (tau > 0) & (tau < float("inf"))  # False for NaN too
        tau = torch.where(rows.greedy, 1.0, torch.where(ok, tau, base))  # greedy: argmax of z/1
        decision = self._same_on_every_rank(tau, d)  # (N, 4): tau, gate, z, logp_phi
        col = pos % w
        old = rec[slot, col, 0]
        # anomalies: a bad τ, a missing τ_{t-1}; and rewrites (partial prefill, recompute)
        events = torch.stack([~ok, rows.continues & ~recorded, (old == old) & (slot > 0)])
        self.counts += events.sum(1)
        rec[slot, col] = decision
        return logits.to(torch.float32) / decision[:, :1]

    def _same_on_every_rank(self, tau: Tensor, d) -> Tensor:
        """(N, 4) float32 [tau, gate, z, logp_phi] (0 where the strategy records none); under
        tensor parallelism, tensor-parallel rank 0's values on every rank."""
        zeros = torch.zeros_like(tau)
        parts = [tau] + [zeros if v is None else v.to(device=tau.device, dtype=torch.float32)
                         .reshape(-1) for v in (d.gate, d.z, d.logp_phi)]
        decision = torch.stack(parts, 1)
        if self.tp_group is not None:
            decision = self.tp_group.broadcast(decision.contiguous(), src=0)
        return decision

    def collect(self, keys: list[str], length: int | None = None) -> dict:
        """The records of ``keys``: ``records`` (K, T, 4) float32 on the CPU, in
        ``RECORD_FIELDS`` order, NaN where none was recorded (T = ``length``, default: every
        position a row holds), plus the anomalies, counters and select time. One copy off the
        device (and one of the counters)."""
        width = self.width if length is None else int(length)
        if width > self.width:
            self._anomaly("over_length", f"a response of {width} tokens is longer than the "
                          f"{self.width} positions the records hold (max_positions)")
            width = self.width
        index = [self.rows.slots.get(k) for k in keys]
        if self.records is None:
            out = torch.full((len(keys), width, len(RECORD_FIELDS)), float("nan"))
            counts = [0] * (len(ANOMALIES) + 1)
        else:
            known = torch.tensor([i is not None for i in index], dtype=torch.bool)
            slots = torch.tensor([i or 0 for i in index], dtype=torch.long,
                                 device=self.records.device)
            out = self.records[slots, :width].cpu()  # (K, T, 4)
            out[~known] = float("nan")
            counts = self.counts.tolist()
        anomalies, messages = dict(self.anomalies), list(self.messages)
        for name, count in zip(ANOMALIES, counts):
            if count:
                anomalies[name] = anomalies.get(name, 0) + count
                messages.append(_ANOMALY_TEXT[name].format(count=count,
                                                           strategy=self.strategy.name))
        counters = {"readded_rows": float(self.rows.readded), "rewritten_rows": float(counts[-1])}
        return {"records": out, "anomalies": anomalies, "messages": messages,
                "counters": counters, "select_s": self.select_s}


_ANOMALY_TEXT = {
    "bad_tau": "{strategy} returned a non-finite or non-positive tau for {count} rows (sampled "
               "at the request's base tau instead)",
    "missing_prev": "{count} rows found no record of their previous position (tau_(t-1) taken "
                    "as the request's base tau)",
}


class TempoModelMixin:
    """Adds the temperature head and the per-token division to a vLLM causal-LM class."""

    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        hidden_size = vllm_config.model_config.hf_text_config.hidden_size
        self.temperature_head = TemperatureHead(hidden_size).to(torch.float32)  # fp32 always
        self.tempo_runtime: TempoRuntime | None = None
        self._tempo_config = id(vllm_config)  # finds a binding offered for this engine

    def compute_logits(self, hidden_states: Tensor, *args, **kwargs) -> Tensor | None:
        logits = super().compute_logits(hidden_states, *args, **kwargs)
        runtime = self.tempo_runtime
        if runtime is None:
            offer = _OFFERS.pop(self._tempo_config, None)
            if offer is None:  # not bound yet (warm-up, before tempo_bind)
                return logits
            runtime = self.tempo_runtime = offer[1](self)
        if logits is None:  # non-last TP/PP rank
            return logits
        return runtime.on_compute_logits(hidden_states, logits)

    def load_weights(self, weights) -> set[str]:
        """Checkpoint weights; ``temperature_head.*`` go to the head, the rest to the base model.

        Each head parameter is written through its (possibly reload-wrapped) ``weight_loader``,
        looked up at call time, so vLLM's layer-wise in-place reload sees the head like any layer.
        """
        from vllm.model_executor.model_loader.weight_utils import default_weight_loader

        head_items: list[tuple[str, Tensor]] = []

        def backbone():
            for name, w in weights:
                if name.startswith(HEAD_PREFIX):
                    head_items.append((name[len(HEAD_PREFIX):], w))
                else:
                    yield name, w

        loaded = set(super().load_weights(backbone()) or ())
        params = dict(self.temperature_head.named_parameters())
        for name, w in head_items:
            if name not in params:
                raise KeyError(f"{HEAD_PREFIX}{name} is not a temperature-head parameter; "
                               f"expected {sorted(HEAD_PREFIX + p for p in params)}")
            param = params[name]
            getattr(param, "weight_loader", default_weight_loader)(param, w)
            loaded.add(HEAD_PREFIX + name)
        return loaded


_OFFERS: dict[int, tuple[object, Callable[[TempoModelMixin], TempoRuntime]]] = {}
"""id(vllm_config) -> (the config, kept alive so that its id stays its own; how the Tempo model
built from that config binds its runtime)"""


def offer_binding(vllm_config, bind: Callable[[TempoModelMixin], TempoRuntime]) -> None:
    """Have the Tempo model that vLLM builds from ``vllm_config`` in this process take its runtime
    from ``bind(model)`` at its first ``compute_logits`` (serving mode: no ``tempo_bind`` RPC).
    Row source and model are built by the same model runner from the same config object."""
    _OFFERS[id(vllm_config)] = (vllm_config, bind)


_CLASSES: dict[str, type] = {}


def tempo_model_class(base: type) -> type:
    """``Tempo<base>``: ``base`` with the temperature head and per-token division (cached)."""
    name = ARCH_PREFIX + base.__name__
    if name not in _CLASSES:
        cls = type(name, (TempoModelMixin, base), {"__module__": __name__, "__qualname__": name})
        _CLASSES[name] = cls
    return _CLASSES[name]


def register_architecture(arch: str) -> str:
    """Register ``Tempo<arch>`` with vLLM's ModelRegistry (idempotent); returns its name."""
    from vllm import ModelRegistry

    if arch.startswith(ARCH_PREFIX):
        arch = arch[len(ARCH_PREFIX):]
    name = ARCH_PREFIX + arch
    if name in ModelRegistry.get_supported_archs():
        return name
    base = ModelRegistry._try_load_model_cls(arch)  # vLLM-internal: see rollout.vllm_compat
    if base is None:
        raise ValueError(f"vLLM has no model class for architecture {arch!r} (config.json "
                         f"'architectures'); use a supported causal LM (Qwen2/Qwen3/Llama ...) or "
                         f"rollout=hf")
    if not hasattr(base, "compute_logits"):
        raise ValueError(f"vLLM's {base.__name__} has no compute_logits; it is not a generative "
                         f"model and cannot carry a per-token temperature")
    ModelRegistry.register_model(name, tempo_model_class(base))
    return name


def __getattr__(name: str):
    """``rollout.vllm_model:Tempo<Arch>`` resolves lazily (for a registry in another process)."""
    if name.startswith(ARCH_PREFIX) and name != ARCH_PREFIX:
        from vllm import ModelRegistry

        base = ModelRegistry._try_load_model_cls(name[len(ARCH_PREFIX):])
        if base is not None:
            return tempo_model_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
