"""Weight sync by a collective, through vLLM's own weight-transfer API (``rollout.weight_sync``).

vLLM 0.32 ships the protocol (``vllm.distributed.weight_transfer``): on every engine worker
``init_weight_transfer_engine(init_info)`` joins a group with the trainer, then each sync is
``start_weight_update()`` (layerwise reload begins), ``update_weights(update_info)`` (only the
names, dtypes and shapes travel by RPC; the bytes come by the group's broadcast from trainer rank
0, in packed buffers of a fixed size) and ``finish_weight_update()`` (layerwise reload ends); on
the trainer a ``TrainerWeightTransferEngine`` iterates a ``WeightSource`` and drives the workers
through a ``VLLMWeightSyncClient``. Its NCCL engines move GPU tensors; they are what runs on a GPU
cluster (``backend_for``: ``nccl``).

On CPU the same protocol runs over gloo: ``GlooWeightTransferEngine`` and
``GlooTrainerWeightTransferEngine`` (backend ``tempo_gloo``, registered with vLLM's two
factories) subclass vLLM's NCCL engines and replace only the transport: the group (a gloo
``ProcessGroup`` on a TCP store instead of a NCCL communicator) and the packed broadcast loops
(the same packing and chunk boundaries as vLLM's ``packed_nccl_broadcast_*``, without CUDA
streams). Everything else, ``send_weights`` above all, is vLLM's code, so CI exercises the
control flow a GPU cluster runs.

``RolloutSyncClient`` is the ``VLLMWeightSyncClient`` the learner's rank 0 holds: it fans every
call out to the rollout actors (``rollout.worker.RolloutWorker``), giving each engine's workers
their place in the group (engine i's tensor-parallel ranks follow engine i - 1's), and carries
what one round is (partial or full, the weight version) to them.

Group: trainer rank 0 is rank 0, then every worker of every engine; one group for all engines,
formed again whenever an engine restarted (its workers are new processes).
"""

from __future__ import annotations

import datetime
import functools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

BACKEND = "tempo_gloo"
"""the gloo twin's name in vLLM's weight-transfer factories"""
BUFFER_BYTES = 64 << 20
"""bytes per packed broadcast, or in flight unpacked (vLLM's NCCL default is 1 GiB; on CPU a
buffer is a host copy)"""
TIMEOUT_S = 300.0
"""a group's collectives give up after this long (a peer that died mid-sync would otherwise
leave the others waiting forever)"""


def backend_for(cuda: bool) -> str:
    """The transfer backend: vLLM's NCCL engines on GPUs, the gloo twin on CPUs."""
    return "nccl" if cuda else BACKEND


def register() -> None:
    """Register the gloo twin with vLLM's factories in this process (idempotent); every process
    that builds a vLLM worker (``rollout.vllm_plugin``) or a trainer engine calls it."""
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "GlooWeightTransferEngine")
    if BACKEND not in WeightTransferTrainerFactory._registry:
        WeightTransferTrainerFactory.register_engine(BACKEND, __name__,
                                                     "GlooTrainerWeightTransferEngine")


# ----------------------------------------------------------------------------- the gloo group


class GlooGroup:
    """A gloo process group of its own (not torch.distributed's default one, which a learner
    rank already has): rank ``rank`` of ``world_size``, met at ``host:port`` (rank 0 hosts the
    TCP store). ``broadcast`` has the signature vLLM's packed loops call."""

    def __init__(self, host: str, port: int, rank: int, world_size: int,
                 timeout_s: float = TIMEOUT_S):
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        self._store = dist.TCPStore(host, port, world_size, rank == 0, timeout=timeout)
        self.pg = dist.ProcessGroupGloo(dist.PrefixStore("tempo-weight-sync", self._store), rank,
                                        world_size, timeout)
        self.rank, self.world_size = rank, world_size

    def broadcast(self, tensor: torch.Tensor, src: int = 0, stream=None) -> None:
        self.broadcast_async(tensor, src).wait()

    def broadcast_async(self, tensor: torch.Tensor, src: int = 0):
        """Start a broadcast of ``tensor`` (in place on receivers); returns its work handle.
        Gloo runs a group's collectives in the order they were started."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = src
        return self.pg.broadcast([tensor], opts)

    def destroy(self) -> None:
        self.pg = self._store = None


def _chunks(metas, buffer_bytes: int):
    """Split (name, (shape, dtype)) into chunks as vLLM's packed loops do: a chunk takes tensors
    until its bytes exceed ``buffer_bytes`` (the tensor that crosses the line is the chunk's
    last)."""
    chunk, size = [], 0
    for name, (shape, dtype) in metas:
        nbytes = math.prod(shape) * dtype.itemsize
        chunk.append((name, shape, dtype, nbytes))
        size += nbytes
        if size > buffer_bytes:
            yield chunk, size
            chunk, size = [], 0
    if chunk:
        yield chunk, size


def gloo_broadcast_consumer(metas, group: GlooGroup, load, buffer_bytes: int, device="cpu",
                            num_buffers: int = 2) -> None:
    """Receive the packed chunks ``metas`` ((name, (shape, dtype)) in send order) describe, and
    hand each chunk's tensors to ``load`` (views of the received buffer). Up to ``num_buffers``
    receives are posted ahead, so a chunk arrives while the one before is loaded (vLLM's NCCL
    loop overlaps them with CUDA streams)."""
    from vllm.distributed.weight_transfer.packed_tensor import unpack_tensor

    pending: deque = deque()

    def load_oldest():
        work, packed, chunk = pending.popleft()
        work.wait()
        names, shapes, dtypes, sizes = zip(*chunk)
        load(unpack_tensor(packed, list(names), list(shapes), list(dtypes), list(sizes)))

    for chunk, size in _chunks(metas, buffer_bytes):
        packed = torch.empty(size, dtype=torch.uint8, device=device)
        pending.append((group.broadcast_async(packed, src=0), packed, chunk))
        if len(pending) >= num_buffers:
            load_oldest()
    while pending:
        load_oldest()


def gloo_broadcast_tensors(pairs, group: GlooGroup, window_bytes: int) -> None:
    """Send ``pairs`` ((name, tensor)) tensor by tensor, no packing copy, with up to
    ``window_bytes`` in flight (vLLM's unpacked mode, ``packed=False``)."""
    in_flight, held = deque(), 0
    for _, tensor in pairs:
        t = tensor.detach().contiguous()
        in_flight.append((group.broadcast_async(t, src=0), t))
        held += t.numel() * t.element_size()
        while held > window_bytes and len(in_flight) > 1:
            work, done = in_flight.popleft()
            work.wait()
            held -= done.numel() * done.element_size()
    for work, _ in in_flight:
        work.wait()


def gloo_receive_tensors(metas, group: GlooGroup, load, window_bytes: int, device="cpu") -> None:
    """Receive what ``gloo_broadcast_tensors`` sends, into a tensor each; ``load`` gets them in
    batches of about ``window_bytes`` (vLLM's layerwise reload takes any split)."""
    batch, pending, held = [], deque(), 0
    for name, (shape, dtype) in metas:
        t = torch.empty(shape, dtype=dtype, device=device)
        pending.append((group.broadcast_async(t, src=0), name, t))
        held += t.numel() * t.element_size()
        if held > window_bytes:
            while pending:
                work, n, done = pending.popleft()
                work.wait()
                batch.append((n, done))
            load(batch)
            batch, held = [], 0
    for work, n, done in pending:
        work.wait()
        batch.append((n, done))
    if batch:
        load(batch)


def gloo_broadcast_producer(pairs, group: GlooGroup, buffer_bytes: int,
                            num_buffers: int = 2) -> None:
    """Send ``pairs`` ((name, tensor)) in packed chunks (vLLM's ``pack_tensors``: a chunk takes
    tensors until its bytes exceed ``buffer_bytes``, as the consumer expects); up to
    ``num_buffers`` chunks in flight, so the next one is gathered and packed while one goes."""
    from vllm.distributed.weight_transfer.packed_tensor import pack_tensors

    it, in_flight = iter(pairs), deque()
    while (chunk := pack_tensors(it, lambda item: item[1], buffer_bytes)) is not None:
        packed = chunk.packed_tensor.cpu()
        in_flight.append((group.broadcast_async(packed, src=0), packed))
        if len(in_flight) >= num_buffers:
            in_flight.popleft()[0].wait()
    for work, _ in in_flight:
        work.wait()


# ----------------------------------------------------------------------------- the engines


def _engines():
    from vllm.distributed.weight_transfer import nccl_engine

    return nccl_engine


@dataclass(kw_only=True)
class GlooWeightTransferInitInfo:
    """Worker-side init info (the NCCL engine's fields: rendezvous, rank offset, wire params)."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    packed: bool = False
    packed_buffer_size_bytes: int = BUFFER_BYTES
    packed_num_buffers: int = 2


@functools.cache
def _worker_engine_class():
    """``GlooWeightTransferEngine``, built once, lazily: vLLM is imported only where it runs."""
    nccl = _engines().NCCLWeightTransferEngine

    class GlooWeightTransferEngine(nccl):
        """vLLM's NCCL worker engine with a gloo group and a CPU receive loop; layerwise reload
        (``start_weight_update`` / ``finish_weight_update``) is vLLM's, unchanged."""

        init_info_cls = GlooWeightTransferInitInfo

        def init_transfer_engine(self, init_info: GlooWeightTransferInitInfo) -> None:
            self.packed = init_info.packed
            self.packed_buffer_size_bytes = init_info.packed_buffer_size_bytes
            self.packed_num_buffers = init_info.packed_num_buffers
            p = self.parallel_config  # this worker's rank, as vLLM's NCCL engine counts it
            rank = p.data_parallel_index * p.world_size + p.rank + init_info.rank_offset
            self.model_update_group = GlooGroup(init_info.master_address, init_info.master_port,
                                                rank, init_info.world_size)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            # the base class ends with torch.accelerator.synchronize(), which raises on a CPU
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, update_info) -> None:
            if self.model_update_group is None:
                raise RuntimeError("gloo weight transfer not initialized: call "
                                   "init_weight_transfer_engine first")
            metas = ((n, (s, getattr(torch, d))) for n, d, s in
                     zip(update_info.names, update_info.dtype_names, update_info.shapes))
            if self.packed:
                gloo_broadcast_consumer(metas, self.model_update_group, self.model.load_weights,
                                        self.packed_buffer_size_bytes, self.device,
                                        self.packed_num_buffers)
            else:
                gloo_receive_tensors(metas, self.model_update_group, self.model.load_weights,
                                     self.packed_buffer_size_bytes, self.device)

    return GlooWeightTransferEngine


@functools.cache
def _trainer_engine_class():
    """(``GlooTrainerInitInfo``, ``GlooTrainerWeightTransferEngine``), built once, lazily."""
    nccl = _engines()

    @dataclass
    class GlooTrainerInitInfo(nccl.TrainerInitInfo):
        """Trainer-side init info (the NCCL trainer's fields). ``packed`` is off by default here
        (vLLM's unpacked mode): on a CPU, packing is one more full copy of the weights, and
        tensor-by-tensor sends with a window of ``packed_buffer_size_bytes`` in flight were
        measured 1.6x faster at 0.1B (NCCL's default stays packed: on a GPU the copy is cheap
        and each collective's launch is not)."""

        backend: ClassVar[str] = BACKEND
        master_address: str = "127.0.0.1"
        master_port: int = 0
        world_size: int = 1
        packed: bool = False
        packed_buffer_size_bytes: int = BUFFER_BYTES
        packed_num_buffers: int = 2

    class GlooTrainerWeightTransferEngine(nccl.NCCLTrainerWeightTransferEngine):
        """vLLM's NCCL trainer engine (its ``send_weights`` control flow: start, update
        concurrently with the broadcast, finish) with a gloo group and a CPU send loop."""

        init_info_cls = GlooTrainerInitInfo

        @classmethod
        def trainer_init(cls, init_info, *, client, source=None):
            engine = cls(client=client, source=source, is_sender=init_info.is_sender,
                         packed=init_info.packed,
                         packed_buffer_size_bytes=init_info.packed_buffer_size_bytes,
                         packed_num_buffers=init_info.packed_num_buffers)
            if not engine.is_sender:
                return engine
            worker_info = {"master_address": init_info.master_address,
                           "master_port": init_info.master_port, "rank_offset": 1,
                           "world_size": init_info.world_size, "packed": init_info.packed,
                           "packed_buffer_size_bytes": init_info.packed_buffer_size_bytes,
                           "packed_num_buffers": init_info.packed_num_buffers}
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=1) as exe:  # both sides meet in the store
                future = exe.submit(client.init_weight_transfer_engine, worker_info)
                engine.model_update_group = GlooGroup(init_info.master_address,
                                                      init_info.master_port, 0,
                                                      init_info.world_size)
                future.result()
            return engine

        def _broadcast(self, source, meta) -> None:
            if not self.is_sender:
                for _ in source:
                    pass
                return
            pairs = self._checked_iter(source, meta)
            if self.packed:
                gloo_broadcast_producer(pairs, self.model_update_group,
                                        self.packed_buffer_size_bytes, self.packed_num_buffers)
            else:
                gloo_broadcast_tensors(pairs, self.model_update_group,
                                       self.packed_buffer_size_bytes)

    return GlooTrainerInitInfo, GlooTrainerWeightTransferEngine


def trainer_init_info(backend: str, rank: int, host: str, port: int, world_size: int):
    """The trainer-side init info of ``backend`` (vLLM's NCCL one, or the gloo twin's) for
    trainer rank ``rank`` (0 sends) of a group of ``world_size`` met at ``host:port``."""
    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        return NCCLTrainerInitInfo(master_address=host, master_port=port, world_size=world_size,
                                   rank=rank)
    if backend != BACKEND:
        raise ValueError(f"weight-transfer backend {backend!r}: use nccl (GPU) or {BACKEND} (CPU)")
    info_cls, _ = _trainer_engine_class()
    return info_cls(master_address=host, master_port=port, world_size=world_size, rank=rank)


def __getattr__(name: str):
    """The engine classes resolve on first use (vLLM's factories load them by name)."""
    if name == "GlooWeightTransferEngine":
        return _worker_engine_class()
    if name in ("GlooTrainerInitInfo", "GlooTrainerWeightTransferEngine"):
        info, engine = _trainer_engine_class()
        return info if name == "GlooTrainerInitInfo" else engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- the client


@dataclass
class SyncRound:
    """What the rollout actors need to know of one sync beyond vLLM's protocol."""

    version: int | None = None
    """the learner updates these weights include (``RolloutWorker.weight_version``)"""
    full: bool = False
    """every weight the run trains: clears a restarted actor's refusal to generate"""


@dataclass
class RolloutSyncClient:
    """vLLM's ``VLLMWeightSyncClient`` over the rollout actors (Ray handles): every call goes to
    all of them at once; engine i's workers take group ranks after engine i - 1's."""

    actors: list
    ranks_per_engine: list[int]
    round: SyncRound = field(default_factory=SyncRound)

    def _all(self, calls):
        import ray

        return ray.get(calls)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        offsets = [init_info["rank_offset"] + sum(self.ranks_per_engine[:i])
                   for i in range(len(self.actors))]
        self._all([a.init_weight_transfer.remote({**init_info, "rank_offset": o})
                   for a, o in zip(self.actors, offsets)])

    def start_weight_update(self) -> None:
        self._all([a.start_weight_update.remote() for a in self.actors])

    def update_weights(self, update_info) -> None:
        self._all([a.update_weights.remote(update_info) for a in self.actors])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all([a.finish_weight_update.remote(self.round.version, self.round.full)
                   for a in self.actors])

    def shutdown_weight_transfer_engine(self) -> None:
        self._all([a.shutdown_weight_transfer.remote() for a in self.actors])
