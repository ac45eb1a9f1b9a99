"""The per-token temperature inside vLLM: a model subclass that owns the temperature head and
divides each row of logits by its τ in ``compute_logits``.

``compute_logits(hidden)`` is the one place where the final post-norm hidden state of every sampled
row meets its logits. ``Tempo<Arch>`` (``tempo_model_class``) subclasses whatever vLLM class
serves the checkpoint's architecture (Qwen2ForCausalLM, Qwen3ForCausalLM, LlamaForCausalLM, ...),
adds ``temperature_head`` (``meta.introllm.TemperatureHead``, fp32, weights ``temperature_head.*``
loaded with the checkpoint) and, once the worker has bound a ``TempoRuntime`` to it, does per step:

    logits = base.compute_logits(hidden)                         # (N, V) untempered
    rows   = row_source.rows(N)                                  # request key, base τ, position
    ctx    = RowContext(positions, prev_tau, base_tau, step, hidden?, logits?)
    d      = strategy.select(ctx)                                # every strategy, same path
    records[key][position] = (τ, c, z, log π_φ)                  # later writes win
    return logits / τ[:, None]                                   # fp32

Requests are sent with temperature 1.0 and no top-k/top-p/penalties, so vLLM samples from
softmax(z / τ) and its returned sampled-token log-prob is log_softmax(z / τ)[y].

Two ways to bind a runtime: the rollout engine's ``tempo_bind`` RPC (``rollout.vllm_worker``), or,
in a server where no engine sends RPCs, a binding *offered* by the serving row source when vLLM
builds it (``offer_binding``, ``rollout.vllm_serving``) and taken by the model at its first
``compute_logits``. A serving runtime keeps only the last records of its most recent requests
(``keep_requests``), since nothing collects them.

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
from rollout.vllm_rows import Row, RowMismatch

log = logging.getLogger(__name__)

ARCH_PREFIX = "Tempo"
"""registered architecture name = ARCH_PREFIX + the checkpoint's architecture"""

Record = tuple[float, float, float, float]  # (tau, gate, z, logp_phi) of one generated token


class TempoRuntime:
    """Worker-side state: the strategy, the row source, the RNG and the per-token records."""

    def __init__(self, rows, strategy: TemperatureStrategy, seed: int = 0, tp_group=None,
                 keep_requests: int | None = None):
        self.rows = rows
        self.strategy = strategy
        self.tp_group = tp_group
        """vLLM's tensor-parallel group when it has > 1 rank: rank 0's decisions are broadcast,
        so every rank divides each row by the same τ (and records the same values)"""
        self.step = 0
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.records: dict[str, dict[int, Record]] = {}
        self.keep_requests = keep_requests
        """None (the rollout engine): every record until ``collect``; n (serving): the records at
        the last two positions (τ_{t-1} of the next row, also after a partial prefill chunk) of
        the n requests written most recently, older ones dropped (bounded memory, no collect)"""
        self.anomalies: dict[str, int] = {}
        self.messages: list[str] = []
        self.rewritten = 0
        """records overwritten at the same position (partial prefill chunks, recomputation)"""
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
        self.records.clear()
        self.anomalies.clear()
        self.messages.clear()
        self.rewritten = 0
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

    def on_compute_logits(self, hidden: Tensor, logits: Tensor) -> Tensor:
        """``compute_logits``: divide here (runner V1), or stash the hidden states for the row
        source's ``apply`` that follows in the same step (runner V2)."""
        if self.rows.divides_in_compute_logits:
            return self.apply_rows(logits, lambda: self.rows.rows(logits.shape[0]), hidden)
        self._hidden = hidden
        return logits

    def apply_rows(self, logits: Tensor, rows_fn, hidden: Tensor | None = None) -> Tensor:
        """logits (N, V) untempered -> (N, V) fp32 logits / τ; records each row.

        ``rows_fn()`` gives the N rows (``rollout.vllm_rows.Row``) or None for a batch with no
        requests behind it; ``hidden`` (N, d) defaults to the states stashed by
        ``on_compute_logits``.
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
        positions, prev_tau = self._positions_and_prev_tau(rows)
        base_tau = torch.tensor([r.base_tau for r in rows], dtype=torch.float32)
        ctx = RowContext(
            positions=positions.to(device), prev_tau=prev_tau.to(device),
            base_tau=base_tau.to(device), step=self.step,
            hidden=hidden if s.needs_hidden else None,
            logits=logits if s.needs_logits else None,
            generator=self._generator(device))
        t0 = time.perf_counter()
        d = s.select(ctx)
        self.select_s += time.perf_counter() - t0
        tau = d.tau.to(device=device, dtype=torch.float32).reshape(n)  # (N,)
        bad = ~torch.isfinite(tau) | (tau <= 0)
        if bool(bad.any()):
            self._anomaly("bad_tau", f"{s.name} returned non-finite or non-positive tau "
                                     f"{tau[bad][:4].tolist()} for {int(bad.sum())} rows")
            tau = torch.where(bad, base_tau.to(device), tau)
        if any(r.greedy for r in rows):  # greedy rows are argmax of z / 1: record tau = 1
            greedy = torch.tensor([r.greedy for r in rows], device=device)
            tau = torch.where(greedy, torch.ones_like(tau), tau)
        decision = self._same_on_every_rank(tau, d)  # (N, 4): tau, gate, z, logp_phi
        self._record(rows, positions.tolist(), decision)
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

    def _positions_and_prev_tau(self, rows: list[Row]) -> tuple[Tensor, Tensor]:
        """(N,) long positions and (N,) float τ_{t-1} (base τ at t = 0) looked up in the records."""
        positions, prev = [], []
        for r in rows:
            t = r.position
            positions.append(t)
            if t == 0 or r.key is None:
                prev.append(r.base_tau)
                continue
            rec = self.records.get(r.key, {}).get(t - 1)
            if rec is None:
                self._anomaly("missing_prev", f"no record of position {t - 1} for {r.key}")
                prev.append(r.base_tau)
            else:
                prev.append(rec[0])
        return torch.tensor(positions, dtype=torch.long), torch.tensor(prev, dtype=torch.float32)

    def _record(self, rows: list[Row], positions: list[int], decision: Tensor) -> None:
        keep = self.keep_requests
        for r, t, rec in zip(rows, positions, decision.tolist()):
            if r.key is None:
                continue
            if keep is None:
                recs = self.records.setdefault(r.key, {})
            else:  # re-inserted: the dict's order is the requests' last writes, oldest first
                recs = {p: v for p, v in self.records.pop(r.key, {}).items() if p >= t - 1}
                self.records[r.key] = recs
            self.rewritten += t in recs
            recs[t] = tuple(rec)
        if keep is not None:
            while len(self.records) > keep:
                del self.records[next(iter(self.records))]

    def collect(self, keys: list[str]) -> dict:
        """Records of ``keys`` as {key: [record or None per position 0..max]}, plus anomalies."""
        out = {}
        for k in keys:
            recs = self.records.pop(k, {})
            top = max(recs) + 1 if recs else 0
            out[k] = [recs.get(t) for t in range(top)]
        counters = {"readded_rows": float(self.rows.readded),
                    "rewritten_rows": float(self.rewritten)}
        return {"records": out, "anomalies": dict(self.anomalies), "messages": list(self.messages),
                "counters": counters, "select_s": self.select_s}


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
