"""Worker-side RPC methods of the vLLM engine (``LLM(worker_extension_cls=...)``).

vLLM mixes ``TempoWorkerExtension`` into its worker class; the rollout engine reaches these
methods with ``llm.collective_rpc("tempo_*", args=...)``. They bind the strategy and the row
source to the model (``tempo_bind``), open a generate() call (``tempo_begin``) and hand back the
per-token records (``tempo_collect``). Weights go through vLLM's own ``reload_weights``.
Importing this module registers nothing by itself; ``tempo_bind`` checks the model is a Tempo one.
"""

from __future__ import annotations

from meta.base import TemperatureStrategy
from meta.introllm import TemperatureHead
from rollout.vllm_model import TempoModelMixin, TempoRuntime
from rollout.vllm_rows import find_row_source


class TempoWorkerExtension:
    """Methods added to the vLLM worker; ``self`` is the worker (``self.model_runner``)."""

    def _tempo_model(self) -> TempoModelMixin:
        model = self.model_runner.get_model()
        if not isinstance(model, TempoModelMixin):
            raise RuntimeError(f"the engine's model is {type(model).__name__}, not a Tempo model "
                               f"class; load it through rollout.vllm_engine.VLLMEngine")
        return model

    def tempo_bind(self, strategy: TemperatureStrategy, seed: int = 0) -> dict:
        """Drive sampling with ``strategy`` from now on; returns the head's hyper-parameters."""
        model = self._tempo_model()
        share_head(strategy, model.temperature_head)
        runtime = model.tempo_runtime
        if runtime is None:
            model.tempo_runtime = TempoRuntime(find_row_source(self.model_runner), strategy, seed)
        else:  # keep the row source (it follows the live batch); swap the strategy
            runtime.strategy = strategy
        return {"hidden_size": model.temperature_head.fc1.in_features}

    def tempo_begin(self, step: int, seed: int | None, seed_global: bool = False) -> None:
        self._tempo_model().tempo_runtime.begin(step, seed, seed_global)

    def tempo_collect(self, keys: list[str]) -> dict:
        return self._tempo_model().tempo_runtime.collect(keys)

    def tempo_refresh_tied_lm_head(self) -> bool:
        """Re-pack a tied LM head after its embedding was reloaded; True if it was tied.

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
        """The head weights the engine samples with (fp32 CPU copies)."""
        return {k: v.detach().cpu().clone()
                for k, v in self._tempo_model().temperature_head.state_dict().items()}


def share_head(strategy: TemperatureStrategy, model_head: TemperatureHead) -> None:
    """Make a head-owning strategy use the model's head module (the one vLLM loads weights into).

    The strategy's own head hyper-parameter ``eps`` is kept; its weights are replaced by the
    model's (loaded from the checkpoint, updated by weight syncs), so ``strategy.state_dict()``
    is always what the engine samples with.
    """
    head = getattr(strategy, "head", None)
    if not isinstance(head, TemperatureHead) or head is model_head:
        return
    mine = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in model_head.state_dict().items()}
    if mine != theirs:
        raise ValueError(f"the strategy's temperature head has shapes {mine} but the model's is "
                         f"{theirs}; build the strategy with hidden_size = the model's hidden size")
    model_head.eps = head.eps
    strategy.head = model_head
