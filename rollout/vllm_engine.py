"""vLLM rollout engine with a per-token temperature chosen inside the model's ``compute_logits``.

    engine = VLLMEngine(model_path, strategy, max_model_len=192, max_new_tokens=64)
    batch = engine.generate(requests, step=3, seed=7)  # -> validated TrajectoryBatch
    secs = engine.load_weights(state_dict)  # θ (HF names) and/or φ (temperature_head.*)
    engine.close()

How it departs from plain vLLM sampling (see ``rollout.vllm_model`` / ``rollout.vllm_rows``):

* the model class is ``Tempo<Arch>``: the checkpoint's vLLM class plus the temperature head; it
  runs ``strategy.select`` on each sampled row and divides the row's logits by its τ. Every
  strategy goes through that path (scalar ones return the request's base τ).
* requests go out with temperature 1.0 (0 for greedy), top-p 1, top-k off, no penalties,
  ``logprobs=0``: vLLM's returned sampled-token log-prob is log_softmax(z / τ)[y], the rollout
  log-prob the learner must reproduce; one request per response (n = 1).
* vLLM loads an overlay of the model folder (``rollout.vllm_overlay``) that names the Tempo
  architecture and holds head weights (initialised and saved there when the folder has none).

It runs in every shape vLLM does (``runner``, ``engine_core``, ``tensor_parallel_size``): model
runner V1 or V2 (one row source each, ``rollout.vllm_rows``), the engine core in this process or
in its own, one or more tensor-parallel worker processes. The strategy therefore lives in the
worker processes: it is sent as its spec (``TemperatureStrategy.spec()``) and rebuilt there, an
IntroLLM head's weights are the model's (the overlay's, then the weight syncs), and everything
crosses the process boundary as plain data (``rollout.vllm_payload``). ``engine.strategy`` is the
caller's object, used here only for what it declares (its spec, whether it has a head).

A plain object: a Ray actor wraps it (``rollout.worker``). Heavy imports happen in ``__init__``.
"""

from __future__ import annotations

import gc
import logging
import re
import shutil
import time
import uuid

import torch
from torch import Tensor

from meta.base import TemperatureStrategy
from rollout.base import ResponseRecord, RolloutRequest, assemble_batch
from rollout.trajectory import TrajectoryBatch
from rollout.vllm_compat import configure_env, import_vllm
from rollout.vllm_overlay import HEAD_PREFIX, build_overlay, checkpoint_keys, head_keys, read_config
from rollout.vllm_payload import pack_state, unpack, unpack_state

log = logging.getLogger(__name__)

WORKER_EXTENSION = "rollout.vllm_worker.TempoWorkerExtension"
_EMBEDDING = "model.embed_tokens."
"""a sync that includes the embedding re-packs a tied LM head (``tempo_finish_weight_update``)"""
_LAYER = re.compile(r"^(.*?\.\d+)\.")  # "model.layers.3.mlp.up_proj.weight" -> "model.layers.3"


class VLLMEngine:
    """Generates ``TrajectoryBatch``es with vLLM; one engine per process."""

    def __init__(self, model_path: str, strategy: TemperatureStrategy, *, dtype: str = "float32",
                 max_model_len: int, max_new_tokens: int, kv_cache_gb: int = 1,
                 gpu_memory_utilization: float = 0.5, max_num_seqs: int = 256,
                 enforce_eager: bool = True, seed: int = 0, head_dir: str | None = None,
                 runner: str = "auto", engine_core: str = "inproc", tensor_parallel_size: int = 1,
                 weight_transfer: str | None = None, **engine_kwargs):
        """``runner``: vLLM's model runner, ``auto`` (vLLM's own choice) | ``v1`` | ``v2``;
        ``engine_core``: ``inproc`` (in this process) | ``process`` (its own, vLLM's default);
        ``tensor_parallel_size``: ranks, one worker process each when > 1.
        ``weight_transfer``: the backend of vLLM's weight-transfer API the engine's workers join
        a trainer's group with (``rollout.weight_transfer``: nccl, or the gloo twin on CPU);
        None: weights come by ``load_weights`` only.
        ``engine_kwargs`` go to ``vllm.LLM`` unchanged (e.g. ``max_num_batched_tokens``,
        ``num_gpu_blocks_override``, ``block_size``).
        ``head_dir``: where the overlay folder lives (kept, and its head reused, across runs);
        None = a temporary folder removed by ``close``."""
        if max_new_tokens < 1 or max_model_len <= max_new_tokens:
            raise ValueError(f"need 1 <= max_new_tokens ({max_new_tokens}) < max_model_len "
                             f"({max_model_len}); set max_model_len = max prompt + max_new_tokens")
        configure_env(kv_cache_gb, runner=runner, engine_core=engine_core,
                      tensor_parallel_size=tensor_parallel_size)
        import_vllm()
        from vllm import LLM, envs

        if hasattr(envs, "disable_envs_cache"):  # an earlier engine froze env lookups: re-read
            envs.disable_envs_cache()

        self.model_path = str(model_path)
        self.max_model_len, self.max_new_tokens, self.seed = max_model_len, max_new_tokens, seed
        self.strategy = strategy
        self.shape = {"engine_core": engine_core, "tensor_parallel_size": int(tensor_parallel_size)}
        self._remote = engine_core == "process"
        """RPC payloads cross a process boundary as msgpack: tensors go packed"""
        architecture = self._prepare_folder(head_dir)
        llm_kwargs = dict(model=str(self._overlay), tokenizer=self.model_path, dtype=dtype,
                          max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                          enforce_eager=enforce_eager, seed=seed,
                          gpu_memory_utilization=gpu_memory_utilization,
                          tensor_parallel_size=int(tensor_parallel_size),
                          worker_extension_cls=WORKER_EXTENSION, **engine_kwargs)
        if tensor_parallel_size > 1:
            llm_kwargs.setdefault("distributed_executor_backend", "mp")
        if weight_transfer is not None:
            from rollout.weight_transfer import register

            register()  # in this process; spawned workers register through rollout.vllm_plugin
            llm_kwargs["weight_transfer_config"] = {"backend": weight_transfer}
        if engine_kwargs.get("enable_batch_sharded_sampling"):
            raise ValueError("enable_batch_sharded_sampling=True makes vLLM's runner V2 compute "
                             "logits through compute_logits_local, bypassing the per-token "
                             "temperature; leave it off")
        use_v2 = uses_v2_runner(runner, llm_kwargs)
        self.shape["runner"] = "v2" if use_v2 else "v1"
        from rollout.vllm_rows import row_source_class

        llm_kwargs["logits_processors"] = [row_source_class(use_v2)]
        if use_v2:  # V2 divides in its logits processor: log-probs after it (rollout.vllm_rows)
            llm_kwargs["logprobs_mode"] = "processed_logprobs"
        self.llm = None
        t0 = time.perf_counter()
        set_num_threads = torch.set_num_threads
        try:
            self.llm = LLM(**llm_kwargs)
            if self.llm.llm_engine.vllm_config.use_v2_model_runner != use_v2:
                raise RuntimeError(f"vLLM chose model runner {'V2' if not use_v2 else 'V1'} after "
                                   f"the engine prepared for {self.shape['runner']}; set runner=v1 "
                                   f"or runner=v2 explicitly")
            self._rpc_all("tempo_bind", strategy.spec(), seed, max_new_tokens)
        except BaseException:
            self.close()
            raise
        finally:
            # vLLM's CPU worker replaces torch.set_num_threads process-wide with a no-op (it guards
            # the OpenMP binding of its own worker processes); in-process nothing was bound
            torch.set_num_threads = set_num_threads
        self.start_s = time.perf_counter() - t0
        if self._remote:
            self._watch_engine_core()
        from vllm.platforms import current_platform

        self._on_cpu = current_platform.is_cpu()
        tok = self.llm.get_tokenizer()
        self.tokenizer = tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        log.info("vLLM engine ready in %.1fs (%s, %s, %s)", self.start_s, architecture, dtype,
                 self.shape)

    # ------------------------------------------------------------------ public API

    def set_strategy(self, strategy: TemperatureStrategy) -> None:
        """Sample with ``strategy`` from the next generate() on (sent as its spec; a head-owning
        one samples with the engine's head weights)."""
        self._rpc_all("tempo_bind", strategy.spec(), self.seed, self.max_new_tokens)
        self.strategy = strategy

    @torch.no_grad()
    def generate(self, requests: list[RolloutRequest], step: int = 0, seed: int | None = None,
                 greedy: bool = False) -> TrajectoryBatch:
        """One response per request (B = len(requests)); returns a validated TrajectoryBatch.

        ``seed`` makes the batch reproducible: it seeds the strategy's RNG and vLLM's sampling
        (per-request seeds on GPU; on CPU the process's global torch RNG, see below), given the
        same requests and engine settings. ``greedy`` decodes by argmax with τ = 1 (recorded).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from rollout.vllm_rows import BASE_TAU, GREEDY, KEY

        if not requests:
            raise ValueError("generate() needs at least one request")
        for i, q in enumerate(requests):
            if not q.prompt_ids or len(q.prompt_ids) + self.max_new_tokens > self.max_model_len:
                raise ValueError(
                    f"request {i} has {len(q.prompt_ids)} prompt tokens; need 1 <= prompt tokens "
                    f"<= max_model_len - max_new_tokens = "
                    f"{self.max_model_len - self.max_new_tokens}; "
                    f"truncate prompts or raise max_model_len")
        t0 = time.perf_counter()
        # CPU, runner V1: vLLM rewinds a per-request generator when a partial-prefill row's token
        # is dropped, which CPU generators cannot do; seeded batches there reseed the global RNG
        # vLLM draws from. V2 draws from (seed, position) without a generator.
        per_request_seed = seed is not None and (not self._on_cpu or self.shape["runner"] == "v2")
        tag = uuid.uuid4().hex[:12]
        keys = [f"{tag}-{i}" for i in range(len(requests))]
        params = [SamplingParams(
            n=1, temperature=0.0 if greedy else 1.0, top_p=1.0, top_k=0, min_p=0.0,
            max_tokens=self.max_new_tokens, logprobs=0, flat_logprobs=True,
            seed=(seed * 1_000_003 + i) % (2 ** 63) if per_request_seed else None,
            detokenize=False,  # one batch decode below: ~12 % of generate() on the embedded model
            extra_args={KEY: k, BASE_TAU: float(q.base_tau), GREEDY: bool(greedy)})
            for i, (q, k) in enumerate(zip(requests, keys))]
        prompts = [TokensPrompt(prompt_token_ids=list(q.prompt_ids)) for q in requests]
        self._rpc_all("tempo_begin", step, seed, seed is not None and not per_request_seed)
        outputs = self._run(keys, prompts, params)
        ids = [list(o.outputs[0].token_ids) for o in outputs]
        got = self._collect(keys, max(map(len, ids)))
        if got["anomalies"]:
            raise RuntimeError(f"per-token temperature bookkeeping failed in vLLM: "
                               f"{got['anomalies']}; e.g. {got['messages'][:3]}")
        recs = _checked_records(got["records"], ids, keys)  # (B, T, 4)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)  # as the hf engine
        records = [self._record(out, tokens, rec, k, text)
                   for out, tokens, rec, k, text in zip(outputs, ids, recs, keys, texts)]
        n_tokens = sum(len(r.token_ids) for r in records)
        stats = {"gen_s": time.perf_counter() - t0, "gen_tokens": float(n_tokens),
                 "select_s": got["select_s"],
                 **{f"vllm/{k}": v for k, v in got["counters"].items()}}
        return assemble_batch(requests, records, self.pad_id, step, stats)

    def load_weights(self, state_dict: dict[str, Tensor]) -> float:
        """Load θ (HF parameter names) and/or φ (``temperature_head.*``) into the running engine.

        Every module touched must be sent whole (a decoder layer ``model.layers.N`` with all its
        parameters, or a top-level module such as ``model.embed_tokens``): vLLM reloads layer by
        layer and a half-sent layer corrupts its other parameters. Resets the prefix cache.
        Returns the seconds the sync took.
        """
        t0 = time.perf_counter()
        sd = {k: state_dict[k].detach() for k in self._check_names(state_dict)}
        self._rpc_all("tempo_load_weights", pack_state(sd) if self._remote else sd,
                      len(sd) < len(self._keys))
        self.llm.reset_prefix_cache()
        elapsed = time.perf_counter() - t0
        log.debug("weight sync of %d tensors in %.3fs", len(sd), elapsed)
        return elapsed

    # ------------------------------------------------------------------ collective weight sync
    # vLLM's weight-transfer protocol on every worker (rollout.weight_transfer): the trainer's
    # rank 0 drives these through the rollout actor while it broadcasts the bytes

    def init_weight_transfer(self, init_info: dict) -> None:
        """Join the trainer's weight-transfer group (this engine's workers at ``rank_offset``)."""
        self._rpc_all("init_weight_transfer_engine", init_info)

    def start_weight_update(self) -> None:
        self._sync_t0 = time.perf_counter()
        self._rpc_all("start_weight_update")

    def update_weights(self, update_info: dict) -> None:
        """Receive the weights ``update_info`` names (names, dtype names, shapes: checked as
        ``load_weights`` checks a state dict) by the group's broadcast."""
        names = self._check_names(update_info["names"])
        self._sync_partial = len(names) < len(self._keys)
        self._sync_embedding = any(n.startswith(_EMBEDDING) for n in names)
        self._rpc_all("update_weights", update_info)

    def finish_weight_update(self) -> float:
        """End the update (vLLM's layerwise reload); the seconds since ``start_weight_update``."""
        self._rpc_all("tempo_finish_weight_update", self._sync_partial, self._sync_embedding)
        self.llm.reset_prefix_cache()
        return time.perf_counter() - self._sync_t0

    def shutdown_weight_transfer(self) -> None:
        """Leave the weight-transfer group."""
        self._rpc_all("shutdown_weight_transfer_engine")

    def head_state_dict(self) -> dict[str, Tensor]:
        """The temperature head the engine samples with (TemperatureHead names, fp32 copies)."""
        return unpack_state(self._rpc("tempo_head_state"))

    def _watch_engine_core(self) -> None:
        """Wake a caller blocked on a dead engine-core process.

        vLLM's client notices the death (``resources.engine_dead``) and shuts down, but a caller
        already waiting waits forever (vLLM 0.32 and 0.33): in ``LLMEngine.step`` for outputs
        (the output queue gets nothing), or in ``call_utility`` (a weight sync, the per-token
        records, any ``collective_rpc``: its future is never resolved). This thread hands both
        vLLM's own ``EngineDeadError``, which the caller then raises. A call made after the
        death is refused by vLLM itself (``ensure_alive``).
        """
        import threading

        from vllm.v1.engine.exceptions import EngineDeadError

        core = self.llm.llm_engine.engine_core

        def watch():
            while self.llm is not None and not core.resources.engine_dead:
                time.sleep(0.5)
            if self.llm is not None:  # died, not closed
                core.outputs_queue.put_nowait(EngineDeadError())
                for future in list(core.utility_results.values()):
                    if not future.done():
                        future.set_exception(EngineDeadError())

        threading.Thread(target=watch, name="TempoEngineCoreWatch", daemon=True).start()

    def alive(self) -> bool:
        """False once a process of the engine died (the engine core, when it runs in its own
        process, or a tensor-parallel worker): vLLM cannot recover from that in place."""
        core = self.llm.llm_engine.engine_core
        resources = getattr(core, "resources", None)  # the client of an engine-core process
        if resources is not None and resources.engine_dead:
            return False
        executor = getattr(getattr(core, "engine_core", None), "model_executor", None)  # in-process
        return not getattr(executor, "is_failed", False)

    def close(self) -> None:
        """Shut the engine down and free its memory; removes a temporary overlay folder."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if hasattr(core, "shutdown"):
                core.shutdown()
            del llm, core
            gc.collect()
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
            except Exception as e:  # noqa: BLE001 - best effort: the process may be exiting
                log.warning("vLLM cleanup: %s", e)
        if getattr(self, "_overlay_is_temporary", False):
            shutil.rmtree(self._overlay, ignore_errors=True)
            self._overlay_is_temporary = False

    # ------------------------------------------------------------------ internals

    def _prepare_folder(self, head_dir: str | None) -> str:
        """Register the Tempo class, build the overlay vLLM loads, index the weight names."""
        from rollout.vllm_model import register_architecture
        from rollout.vllm_plugin import announce

        config = read_config(self.model_path)
        archs = config.get("architectures") or []
        if not archs:
            raise ValueError(f"{self.model_path}/config.json has no 'architectures'; set it to the "
                             f"model class, e.g. [\"Qwen2ForCausalLM\"]")
        architecture = register_architecture(archs[0])
        announce(archs[0])  # spawned vLLM processes register it too (rollout.vllm_plugin)
        hidden_size = int((config.get("text_config") or config)["hidden_size"])
        head = self.strategy.head
        if head is not None and head.fc1.in_features != hidden_size:
            raise ValueError(f"the strategy's temperature head reads hidden size "
                             f"{head.fc1.in_features} but {self.model_path} has hidden_size "
                             f"{hidden_size}; build the strategy with hidden_size={hidden_size}")
        self._keys = checkpoint_keys(self.model_path)
        strategy, seed = self.strategy, self.seed
        self._overlay, self._overlay_is_temporary = build_overlay(
            self.model_path, architecture, self._keys,
            lambda: initial_head_state(strategy, hidden_size, seed), head_dir)
        self._keys |= set(head_keys())
        self._modules: dict[str, set[str]] = {}  # module -> the weight names it must be sent with
        for k in self._keys:
            self._modules.setdefault(_module_of(k), set()).add(k)
        return architecture

    def _run(self, keys: list[str], prompts: list, params: list) -> list:
        """Generate to completion; outputs in ``keys`` order.

        With the engine core in its own process, requests reach it one message at a time and it
        would start stepping on the first few: the batch composition (and with it which row gets
        which draw) would depend on timing. So the scheduler is paused while they are added and
        resumed after the last one (messages are processed in order), and a seeded batch repeats
        in every shape.
        """
        engine = self.llm.llm_engine
        core = engine.engine_core
        if self._remote:
            core.call_utility("pause_scheduler", "keep", False)
        try:
            for key, prompt, p in zip(keys, prompts, params):
                engine.add_request(key, prompt, p)
        finally:
            if self._remote:
                core.call_utility("resume_scheduler")
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
        missing = [k for k in keys if k not in done]
        if missing:
            raise RuntimeError(f"vLLM finished without outputs for {missing[:4]} "
                               f"({len(missing)} of {len(keys)} requests)")
        return [done[k] for k in keys]

    def _rpc_all(self, method: str, *args) -> list:
        """Call a ``TempoWorkerExtension`` method on every rank; their results, rank order."""
        return self.llm.collective_rpc(method, args=args)

    def _rpc(self, method: str, *args):
        return self._rpc_all(method, *args)[0]

    def _collect(self, keys: list[str], length: int) -> dict:
        """Rank 0's records of ``keys`` (``records``: (K, length, 4)), checked equal on every
        tensor-parallel rank."""
        replies = self._rpc_all("tempo_collect", keys, length, self._remote)
        got = replies[0]
        got["records"] = unpack(got["records"])
        agreeing = sum(r["digest"] == got["digest"] for r in replies)
        got["counters"]["ranks_agreeing"] = float(agreeing)
        for rank, other in enumerate(replies[1:], 1):
            for name, count in other["anomalies"].items():
                got["anomalies"][f"rank{rank}/{name}"] = count
            if other["digest"] != got["digest"]:
                got["anomalies"]["ranks_disagree"] = got["anomalies"].get("ranks_disagree", 0) + 1
                got["messages"].append(f"tensor-parallel rank {rank} recorded other per-token "
                                       f"values than rank 0")
        return got

    def _record(self, out, ids: list[int], rec: Tensor, key: str, text: str) -> ResponseRecord:
        """One response: vLLM's output and its records ``rec`` (n, 4), one row per token."""
        comp = out.outputs[0]
        if comp.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished response {key} with {comp.finish_reason!r}; "
                               f"expected 'stop' (EOS) or 'length' (max_new_tokens)")
        head = self.strategy.head is not None
        tau, gate, z, logp_phi = rec.unbind(-1)  # (n,) each, views
        return ResponseRecord(
            token_ids=ids, tau=tau, logp=_sampled_logprobs(comp, ids),
            finish_reason=comp.finish_reason, text=text, gate=gate if head else None,
            z=z if head else None, logp_phi=logp_phi if head else None)

    def _check_names(self, names) -> list[str]:
        """The weight names to send (a tied LM head's dropped: it is the embedding, sent as
        that); rejects unknown names and partly-sent modules."""
        names = list(names)
        if "lm_head.weight" not in self._keys and "model.embed_tokens.weight" in names:
            names = [n for n in names if n != "lm_head.weight"]
        unknown = sorted(n for n in names if n not in self._keys)
        if unknown:
            raise KeyError(f"weights not in the model: {unknown[:5]} (of {len(unknown)}); expected "
                           f"Hugging Face names such as {sorted(self._keys)[:3]} or "
                           f"{HEAD_PREFIX}fc1.weight")
        sent = set(names)
        partial = sorted(m for m in {_module_of(n) for n in names} if not self._modules[m] <= sent)
        if partial:
            raise ValueError(f"weights sent for part of module(s) {partial[:5]}: send every "
                             f"parameter of a module (vLLM reloads per layer and would corrupt the "
                             f"unsent ones), or the full state dict")
        if not names:
            raise ValueError("a weight sync got no weights")
        return names


def _checked_records(records: Tensor, ids: list[list[int]], keys: list[str]) -> list[Tensor]:
    """Each response's (n, 4) records out of the (B, T, 4) batch of them; a position of a
    generated token with no record (NaN) means the row attribution lost track: raise."""
    n = torch.tensor([len(x) for x in ids])  # (B,)
    lost = torch.isnan(records[..., 0]) & (torch.arange(records.shape[1]) < n[:, None])  # (B, T)
    if bool(lost.any()):
        i = int(lost.any(-1).nonzero()[0])
        where = lost[i].nonzero().flatten()[:8].tolist()
        raise RuntimeError(f"response {keys[i]} has {len(ids[i])} tokens but no recorded "
                           f"temperature at positions {where}; the row attribution lost track")
    return [records[i, :len(x)] for i, x in enumerate(ids)]


def _module_of(name: str) -> str:
    """The unit a weight sync must send whole: a numbered block, else the owning module."""
    m = _LAYER.match(name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


def _sampled_logprobs(comp, ids: list[int]) -> list[float]:
    """vLLM's log-prob of each sampled token (logprobs=0 returns exactly the sampled one)."""
    lps = comp.logprobs
    if lps is None or len(lps) != len(ids):
        raise RuntimeError(f"vLLM returned {None if lps is None else len(lps)} log-probs for "
                           f"{len(ids)} tokens; requests must set logprobs=0")
    if hasattr(lps, "start_indices"):  # FlatLogprobs
        out = []
        for t, y in enumerate(ids):
            j = lps.start_indices[t]
            if lps.token_ids[j] != y:  # the sampled token comes first; search the rest anyway
                j = lps.token_ids.index(y, j, lps.end_indices[t])
            out.append(float(lps.logprobs[j]))
        return out
    return [float(pos[y].logprob) for pos, y in zip(lps, ids)]


def initial_head_state(strategy: TemperatureStrategy, hidden_size: int, seed: int) -> dict:
    """Head weights for a folder that has none: the strategy's own head (IntroLLM's init, so the
    engine and the caller start identical), else a fresh ``TemperatureHead`` seeded by ``seed``."""
    from meta.introllm import TemperatureHead

    if isinstance(strategy.head, TemperatureHead):
        return strategy.head.state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TemperatureHead(hidden_size).state_dict()


def uses_v2_runner(runner: str, llm_kwargs: dict) -> bool:
    """Whether vLLM will run model runner V2 for these ``LLM`` arguments. ``auto`` asks vLLM's
    own engine config (~1 s): the row source must be chosen before the engine starts."""
    if runner != "auto":
        return runner == "v2"
    from vllm.engine.arg_utils import EngineArgs

    keys = set(EngineArgs.__dataclass_fields__)
    args = EngineArgs(**{k: v for k, v in llm_kwargs.items() if k in keys})
    return bool(args.create_engine_config().use_v2_model_runner)
