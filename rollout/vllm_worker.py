"""Worker-side RPC methods of the vLLM engine (``LLM(worker_extension_cls=...)``).

vLLM mixes ``TempoWorkerExtension`` into its worker class, in whatever process the worker runs:
the rollout actor's own (engine core in-process, one rank), the engine-core process, or one
process per tensor-parallel rank. The rollout engine reaches these methods with
``llm.collective_rpc("tempo_*", args=...)``, which calls them on every rank; arguments and
results are plain data (``rollout.vllm_payload``). They build the strategy from its spec and bind
it and the row source to the model (``tempo_bind``, through ``bind_runtime``, which serving mode
calls without RPCs: ``rollout.vllm_serving``), open a generate() call (``tempo_begin``), hand back
the per-token records (``tempo_collect``: one RPC per generate), load weights
(``tempo_load_weights``) and read the head (``tempo_head_state``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging

from meta.introllm import TemperatureHead
from meta.registry import strategy_from_spec
from rollout.vllm_model import TempoModelMixin, TempoRuntime
from rollout.vllm_payload import pack, pack_state, unpack
from rollout.vllm_rows import find_row_source

_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise",
                   "vllm.model_executor.model_loader.reload.inplace")
_TIED = ("model.embed_tokens.", "lm_head.")  # a tied LM head must be re-packed after these


class TempoWorkerExtension:
    """Methods added to the vLLM worker; ``self`` is the worker (``self.model_runner``)."""

    def _tempo_model(self) -> TempoModelMixin:
        model = self.model_runner.get_model()
        if not isinstance(model, TempoModelMixin):
            raise RuntimeError(f"the engine's model is {type(model).__name__}, not a Tempo model "
                               f"class; load it through rollout.vllm_engine.VLLMEngine")
        return model

    def tempo_bind(self, spec: dict, seed: int = 0, max_positions: int = 4096) -> None:
        """Drive sampling with the strategy of ``spec`` from now on; a head-owning strategy
        samples with the model's head (its weights: the checkpoint's, then the weight syncs).
        ``max_positions``: the longest response (its records' width on the device)."""
        model = self._tempo_model()
        if model.tempo_runtime is None:
            bind_runtime(model, find_row_source(self.model_runner), spec, seed,
                         max_positions=max_positions)
        else:  # keep the row source (it follows the live batch); swap the strategy
            strategy = strategy_from_spec(spec)
            share_head(strategy, model.temperature_head)
            model.tempo_runtime.strategy = strategy

    def tempo_begin(self, step: int, seed: int | None, seed_global: bool = False) -> None:
        self._tempo_model().tempo_runtime.begin(step, seed, seed_global)

    def tempo_collect(self, keys: list[str], length: int, packed: bool = False,
                      full: bool = False) -> dict:
        """Rank 0: the records of ``keys`` over their first ``length`` positions, one (K, T, 4)
        tensor (``TempoRuntime.collect``; ``packed``: as plain bytes, for an engine core in
        another process); every rank: the SHA-256 of those bytes, so that the engine checks that
        all tensor-parallel ranks recorded the same; other ranks send the records only when
        ``full``."""
        got = self._tempo_model().tempo_runtime.collect(keys, length)
        records = got["records"]
        got["digest"] = hashlib.sha256(records.numpy().tobytes()).hexdigest()
        if _tp_rank() != 0 and not full:
            got["records"] = None
        elif packed:
            got["records"] = pack(records)
        return got

    def tempo_load_weights(self, weights: dict, quiet: bool = False) -> bool:
        """Load θ (HF names) and/or φ (``temperature_head.*``) into the running model (vLLM's own
        in-place ``reload_weights``); ``weights``: name -> tensor or ``vllm_payload.pack``.
        Returns whether a tied LM head was re-packed (see ``_refresh_tied_lm_head``)."""
        items = [(k, unpack(v)) for k, v in weights.items()]
        # a partial sync (e.g. the head alone) makes vLLM warn about every layer not sent; a full
        # one about the layers that hold no checkpoint tensors (_drop_restored)
        with _quiet(*_RELOAD_LOGGERS) if quiet else _drop_restored(self._tempo_model()):
            self.reload_weights(weights_iterator=iter(items))
        return any(k.startswith(_TIED) for k, _ in items) and self._refresh_tied_lm_head()

    def tempo_finish_weight_update(self, partial: bool, embedding: bool) -> None:
        """vLLM's ``finish_weight_update`` (the layerwise reload's end) with what
        ``tempo_load_weights`` does around its reload: the warnings of a partial sync quieted (of
        a full one, those of layers that hold no checkpoint tensors), and a tied LM head re-packed
        when the embedding came (``_refresh_tied_lm_head``)."""
        with _quiet(*_RELOAD_LOGGERS) if partial else _drop_restored(self._tempo_model()):
            self.finish_weight_update()
        if embedding:
            self._refresh_tied_lm_head()

    def _refresh_tied_lm_head(self) -> bool:
        """Re-pack a tied LM head after its embedding may have been reloaded; True if tied.

        vLLM's ``reload_weights`` re-runs ``process_weights_after_loading`` for the modules it
        reloads, but a tied ``lm_head`` is skipped (its weight *is* the embedding's). On CPU the
        head's GEMM uses a packed copy made at load time (``cpu_linear``), which then still holds
        the old embedding: sampled log-probs silently drift from the learner's. Re-packing it here
        fixes that; on GPU the method does nothing.
        """
        model = self._tempo_model()
        lm_head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)  # HF-style layout
        weight = getattr(lm_head, "weight", None)
        if weight is None or embed is None or weight.data_ptr() != embed.weight.data_ptr():
            return False
        method = getattr(lm_head, "quant_method", None)
        if method is not None and hasattr(method, "process_weights_after_loading"):
            method.process_weights_after_loading(lm_head)
        return True

    def tempo_head_state(self) -> dict:
        """The head weights the engine samples with (packed fp32 copies)."""
        return pack_state(self._tempo_model().temperature_head.state_dict())


def bind_runtime(model: TempoModelMixin, rows, spec: dict, seed: int = 0,
                 keep_requests: int | None = None, max_positions: int = 4096) -> TempoRuntime:
    """Give ``model`` a ``TempoRuntime`` over the row source ``rows`` that samples with the
    strategy of ``spec`` (a head-owning one with the model's head); returns it. Used by
    ``tempo_bind`` and by serving mode (``rollout.vllm_serving``, ``keep_requests``: see
    ``TempoRuntime``)."""
    strategy = strategy_from_spec(spec)
    share_head(strategy, model.temperature_head)
    runtime = TempoRuntime(rows, strategy, seed, tp_group=_tp_group(),
                           keep_requests=keep_requests, max_positions=max_positions)
    model.tempo_runtime = runtime
    if not rows.divides_in_compute_logits:
        rows.runtime = runtime
    return runtime


def _tp_group():
    """vLLM's tensor-parallel group when it has more than one rank, else None."""
    from vllm.distributed.parallel_state import get_tp_group

    group = get_tp_group()
    return group if group.world_size > 1 else None


def _tp_rank() -> int:
    group = _tp_group()
    return 0 if group is None else group.rank_in_group


@contextlib.contextmanager
def _quiet(*names: str):
    """Raise the given loggers to ERROR for the duration of the block."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


_FAILED = "%s: Failed to load weights"  # vLLM 0.32, model_loader/reload/layerwise.py


@contextlib.contextmanager
def _drop_restored(model):
    """Drop vLLM's "<Layer>: Failed to load weights" warnings for the layers that hold no
    checkpoint tensors, during a full sync.

    vLLM's ``reload_weights`` warns for every layer with tensors that received none and puts that
    layer's tensors back as they were. Two kinds always get none, and lose nothing: layers with
    buffers only (the rotary embedding's cos/sin cache, computed at start-up) and a tied LM head
    (``tie_word_embeddings``: its weight *is* the embedding's, which the sync reloads; vLLM skips
    ``lm_head.*`` keys for a tied model, so sending the key would not help). Any other layer's
    warning still gets through: it would mean weights were really not loaded.
    """
    seen: set[int] = set()  # storages of the parameters of the modules visited so far
    names = set()
    for module in model.modules():
        params = [p for p in module._parameters.values() if p is not None]
        if not params and any(b is not None for b in module._buffers.values()):
            names.add(type(module).__name__)  # buffers only
        elif params and all(p.data_ptr() in seen for p in params):
            names.add(type(module).__name__)  # tied to an earlier module's parameters
        seen.update(p.data_ptr() for p in params)

    def keep(record: logging.LogRecord) -> bool:
        return not (record.msg == _FAILED and record.args and record.args[0] in names)

    logger = logging.getLogger(_RELOAD_LOGGERS[0])
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def share_head(strategy, model_head: TemperatureHead) -> None:
    """Make a head-owning strategy use the model's head module (the one vLLM loads weights into).

    The strategy's own head hyper-parameter ``eps`` is kept; its weights are replaced by the
    model's (loaded from the checkpoint, updated by weight syncs).
    """
    head = strategy.head
    if head is None or head is model_head:
        return
    mine = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in model_head.state_dict().items()}
    if mine != theirs:
        raise ValueError(f"the strategy's temperature head has shapes {mine} but the model's is "
                         f"{theirs}; build the strategy with hidden_size = the model's hidden size")
    model_head.eps = head.eps
    strategy.head = model_head
