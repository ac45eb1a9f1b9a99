"""The vLLM engine's parts without an engine: row tracking, the per-row runtime, the overlay folder.

Fast (no model, no engine start); imports vLLM for its logits-processor types.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from meta.base import RowContext, TempDecision, TemperatureStrategy
from meta.introllm import TemperatureHead
from rollout.vllm_compat import check_version
from rollout.vllm_engine import _module_of
from rollout.vllm_model import TempoRuntime
from rollout.vllm_overlay import (
    HEAD_FILE,
    INDEX_FILE,
    build_overlay,
    checkpoint_keys,
    head_keys,
    save_head,
)
from rollout.vllm_rows import (
    BASE_TAU,
    GREEDY,
    KEY,
    RowMismatch,
    V1RowTracker,
    V2RowSource,
    find_row_source,
)


def params(key, tau=1.0):
    return SamplingParams(extra_args={KEY: key, BASE_TAU: tau})


def update(size, removed=(), added=(), moved=()):
    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved))


# --------------------------------------------------------------------------- V1RowTracker


def keys_of(t, batch):
    """The request key of each row of a RowBatch (record slot -> key, via the tracker's slots)."""
    by_slot = {v: k for k, v in t.slots._slot.items()}
    return [by_slot.get(int(s)) for s in batch.slot]


def test_tracker_follows_adds_removes_moves_and_swaps():
    t = V1RowTracker(None, torch.device("cpu"), False)
    assert t.rows(4) is None  # no requests yet: warm-up batches pass through
    outs = {k: [] for k in "abcd"}
    t.update_state(update(3, added=[(0, params("a", 0.7), [1], outs["a"]),
                                    (1, params("b"), [1], outs["b"]),
                                    (2, params("c"), [1], outs["c"])]))
    assert keys_of(t, t.rows(3)) == ["a", "b", "c"]
    assert t.rows(3).base_tau.tolist() == pytest.approx([0.7, 1.0, 1.0])
    outs["a"] += [5, 6]  # live reference: two tokens generated -> next row samples position 2
    assert t.rows(3).position.tolist() == [2, 0, 0]
    # b finishes; condense moves the last request into its slot
    t.update_state(update(2, removed=[1], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    assert keys_of(t, t.rows(2)) == ["a", "c"]
    # an attention backend reorders (decode-first): swap
    t.update_state(update(2, moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert keys_of(t, t.rows(2)) == ["c", "a"]
    # a preempted request comes back with tokens already generated
    outs["d"] += [9, 9, 9]
    t.update_state(update(3, added=[(2, params("d"), [1], outs["d"])]))
    rows = t.rows(3)
    assert list(zip(keys_of(t, rows), rows.position.tolist())) == [("c", 0), ("a", 2), ("d", 3)]
    assert t.readded == 1  # "d" (re-)entered with tokens already generated
    t.update_state(None)  # no change
    assert len(t.rows(3).slot) == 3
    with pytest.raises(RowMismatch, match="got 5 rows"):
        t.rows(5)


def test_tracker_slot_reused_in_same_step():
    t = V1RowTracker(None, torch.device("cpu"), False)
    t.update_state(update(2, added=[(0, params("a"), [], []), (1, params("b"), [], [])]))
    # a finishes and a new request takes its slot (removed index popped by the add)
    t.update_state(update(2, added=[(0, params("n"), [], [])]))
    assert keys_of(t, t.rows(2)) == ["n", "b"]


def test_a_request_keeps_its_record_slot_across_preemption_and_unknown_requests_share_slot_0():
    t = V1RowTracker(None, torch.device("cpu"), False)
    t.update_state(update(2, added=[(0, params("a"), [], []), (1, SamplingParams(), [], [])]))
    slot_a = int(t.rows(2).slot[0])
    assert slot_a > 0 and int(t.rows(2).slot[1]) == 0  # no key: the scratch slot
    t.update_state(update(1, removed=[0], moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    t.update_state(update(2, added=[(1, params("a"), [], [4])]))  # a resumes elsewhere
    assert int(t.rows(2).slot[1]) == slot_a


# --------------------------------------------------------------------------- TempoRuntime


class Batch:
    """Requests in a V1 tracker, stepped as a decoding loop: each step every request samples."""

    def __init__(self, requests, width=16):
        self.tracker = V1RowTracker(None, torch.device("cpu"), False)
        self.outputs = [[] for _ in requests]
        added = []
        for i, (key, tau, greedy) in enumerate(requests):
            p = SamplingParams(extra_args={KEY: key, BASE_TAU: tau, GREEDY: greedy})
            added.append((i, p, [1], self.outputs[i]))
        self.added = update(len(requests), added=added)
        self.width = width

    def runtime(self, strategy, **kwargs):
        rt = TempoRuntime(self.tracker, strategy, max_positions=self.width, **kwargs)
        rt.begin(step=0, seed=0)
        self.tracker.update_state(self.added)
        return rt

    def accept(self):
        for out in self.outputs:
            out.append(1)


class PrevPlusOne(TemperatureStrategy):
    """tau_t = tau_{t-1} + 0.1: checks the previous-tau lookup."""

    name = "prevplus"
    per_token = True

    def select(self, ctx: RowContext) -> TempDecision:
        return TempDecision(tau=ctx.prev_tau + 0.1)


def test_runtime_prev_tau_records_and_rewrites():
    b = Batch([("a", 1.0, False), ("b", 0.5, False)])
    rt = b.runtime(PrevPlusOne())
    logits = torch.ones(2, 4)  # (N, V)
    for _ in range(3):
        got = rt.on_compute_logits(torch.zeros(2, 8), logits)
        b.accept()
    rt.on_compute_logits(torch.zeros(2, 8), logits)  # position 3 ...
    # ... again, as for a partial prefill chunk whose token was dropped: the later write wins
    rt.on_compute_logits(torch.zeros(2, 8), logits)
    res = rt.collect(["a", "b"], 4)
    assert res["counters"]["rewritten_rows"] == 2
    assert res["records"].shape == (2, 4, 4)  # (K, T, tau/gate/z/logp_phi)
    assert res["records"][0, :, 0].tolist() == pytest.approx([1.1, 1.2, 1.3, 1.4])
    assert res["records"][1, :, 0].tolist() == pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert not res["anomalies"]
    torch.testing.assert_close(got, logits / torch.tensor([[1.3], [0.8]]))
    unknown = rt.collect(["zz"], 4)["records"]
    assert torch.isnan(unknown).all()  # never recorded: NaN, which the engine refuses


class Broken(TemperatureStrategy):
    name = "broken"

    def select(self, ctx):
        return TempDecision(tau=torch.full_like(ctx.base_tau, float("nan")))


def test_runtime_counts_bad_tau_and_row_mismatch_without_raising():
    b = Batch([("a", 0.9, False), ("g", 1.3, True)])
    rt = b.runtime(Broken())
    out = rt.on_compute_logits(torch.zeros(2, 8), torch.ones(2, 4))
    # NaN replaced by the base tau (and reported); greedy rows always use tau = 1
    torch.testing.assert_close(out, torch.tensor([[1 / 0.9] * 4, [1.0] * 4]))
    logits = torch.ones(3, 4)
    # mismatch: pass-through, reported
    assert rt.on_compute_logits(torch.zeros(3, 8), logits) is logits
    res = rt.collect(["a", "g"], 1)
    assert res["anomalies"] == {"bad_tau": 2, "row_mismatch": 1}
    assert res["records"][1, 0, 0] == 1.0
    assert any("non-finite or non-positive tau for 2 rows" in m for m in res["messages"])


def test_a_position_beyond_the_records_width_is_counted():
    b = Batch([("a", 1.0, False)], width=2)
    rt = b.runtime(PrevPlusOne())
    for _ in range(3):
        rt.on_compute_logits(torch.zeros(1, 8), torch.ones(1, 4))
        b.accept()
    assert rt.collect(["a"], 3)["anomalies"] == {"over_length": 1}


# --------------------------------------------------------------------------- V2RowSource


class _Lens:
    """The two per-slot lengths V2 shares with logits processors (host views, as in vLLM)."""

    def __init__(self, slots):
        self.prompt_len = type("T", (), {"np": np.zeros(slots, dtype=np.int32)})()
        self.prefill_len = type("T", (), {"np": np.zeros(slots, dtype=np.int32)})()


def _add(source, lens, slot, key, prompt, prefill=None, tau=1.0):
    lens.prompt_len.np[slot] = prompt
    lens.prefill_len.np[slot] = prompt if prefill is None else prefill
    assert source.add_request(slot, params(key, tau)) is True


def _ctx(slots, pos):
    return SimpleNamespace(expanded_idx_mapping=torch.tensor(slots),
                           idx_mapping_np=np.array(slots), pos=torch.tensor(pos))


def test_v2_source_positions_under_chunked_prefill_resume_and_slot_reuse():
    lens = _Lens(4)
    src = V2RowSource(None, lens)
    assert src.rows(_ctx([0, 1], [5, 5]), 2) is None  # warm-up: no request added to these slots
    _add(src, lens, 2, "a", prompt=100)
    _add(src, lens, 0, "b", prompt=10, prefill=13)  # resumed after preemption: 3 tokens made
    assert src.readded == 1
    # a: partial prefill chunk (last input at 63 of 100) -> the position its final chunk samples
    # b: final chunk of its re-prefill (last input at 12) -> samples position 3
    rows = src.rows(_ctx([2, 0], [63, 12]), 2)
    assert list(zip(keys_of(src, rows), rows.position.tolist())) == [("a", 0), ("b", 3)]
    rows = src.rows(_ctx([0, 2], [13, 99]), 2)  # decode of b; final prefill chunk of a
    assert list(zip(keys_of(src, rows), rows.position.tolist())) == [("b", 4), ("a", 0)]
    _add(src, lens, 2, "c", prompt=7, tau=0.6)  # a finished; its slot is recycled
    rows = src.rows(_ctx([2], [8]), 1)
    assert (keys_of(src, rows), rows.position.tolist()) == (["c"], [2])
    assert rows.base_tau.tolist() == pytest.approx([0.6])
    with pytest.raises(RowMismatch, match="speculative"):
        src.rows(_ctx([2], [8]), 2)


def test_v2_source_divides_in_apply_with_the_hidden_states_stashed_by_compute_logits():
    lens = _Lens(2)
    src = V2RowSource(None, lens)
    rt = TempoRuntime(src, PrevPlusOne())
    src.runtime = rt
    rt.begin(0, 0)
    _add(src, lens, 1, "a", prompt=4, tau=0.5)
    logits = torch.ones(1, 3)
    assert rt.on_compute_logits(torch.zeros(1, 8), logits) is logits  # V2: no division here
    out = src.apply(logits.clone(), _ctx([1], [3]))
    torch.testing.assert_close(out, logits / 0.6)
    assert rt.collect(["a"], 1)["records"][0, 0, 0].item() == pytest.approx(0.6)


def test_find_row_source_in_either_runner():
    v1 = V1RowTracker(None, torch.device("cpu"), False)
    v2 = V2RowSource(None, _Lens(1))
    runner_v1 = SimpleNamespace(input_batch=SimpleNamespace(logitsprocs=SimpleNamespace(all=[v1])))
    runner_v2 = SimpleNamespace(sampler=SimpleNamespace(logits_processors=[object(), v2]))
    assert find_row_source(runner_v1) is v1 and find_row_source(runner_v2) is v2
    with pytest.raises(RuntimeError, match="no Tempo row source"):
        find_row_source(SimpleNamespace(sampler=SimpleNamespace(logits_processors=[])))


# --------------------------------------------------------------------------- overlay folder


def _fake_model(folder, sharded=False):
    from safetensors.torch import save_file

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"],
                                                    "hidden_size": 8}))
    (folder / "tokenizer.json").write_text("{}")
    save_file({"model.norm.weight": torch.ones(8)}, str(folder / "model.safetensors"))
    if sharded:
        (folder / INDEX_FILE).write_text(json.dumps(
            {"metadata": {}, "weight_map": {"model.norm.weight": "model.safetensors"}}))
    return folder


def _head():
    return TemperatureHead(8).state_dict()


@pytest.mark.parametrize("sharded", [False, True])
def test_overlay_adds_head_without_touching_the_folder(tmp_path, sharded):
    src = _fake_model(tmp_path / "m", sharded)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    keys = checkpoint_keys(src)
    assert keys == {"model.norm.weight"}
    dst, temporary = build_overlay(src, "TempoQwen2ForCausalLM", keys, _head, tmp_path / "ov")
    assert not temporary
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    config = json.loads((dst / "config.json").read_text())
    assert config["architectures"] == ["TempoQwen2ForCausalLM"]
    assert (dst / "model.safetensors").is_symlink() and (dst / "tokenizer.json").is_symlink()
    assert (dst / HEAD_FILE).is_file() and not (dst / HEAD_FILE).is_symlink()
    assert checkpoint_keys(dst) == keys | set(head_keys())  # the index lists the head, if sharded


def test_a_sharded_folder_with_its_head_beside_the_shards_keeps_that_head(tmp_path):
    """An exported sharded model: the index names theta's shards, the head has its own file."""
    src = _fake_model(tmp_path / "m", sharded=True)
    save_head(src, _head())
    keys = checkpoint_keys(src)
    assert keys == {"model.norm.weight"} | set(head_keys())
    dst, _ = build_overlay(src, "TempoQwen2ForCausalLM", keys, lambda: pytest.fail("no init"),
                           tmp_path / "ov")
    assert (dst / HEAD_FILE).is_symlink()  # the folder's own head, not a fresh one
    weight_map = json.loads((dst / INDEX_FILE).read_text())["weight_map"]
    assert {weight_map[k] for k in head_keys()} == {HEAD_FILE}


def test_overlay_reuses_its_head_and_prefers_the_folders(tmp_path):
    src = _fake_model(tmp_path / "m")
    calls = []

    def init():
        calls.append(1)
        return _head()

    dst, _ = build_overlay(src, "TempoQwen2ForCausalLM", checkpoint_keys(src), init,
                           tmp_path / "ov")
    first = (dst / HEAD_FILE).read_bytes()
    build_overlay(src, "TempoQwen2ForCausalLM", checkpoint_keys(src), init, tmp_path / "ov")
    assert len(calls) == 1 and (dst / HEAD_FILE).read_bytes() == first  # kept across runs
    save_head(src, _head())  # now the folder itself has head weights: they are linked, not written
    keys = checkpoint_keys(src)
    dst2, temporary = build_overlay(src, "TempoQwen2ForCausalLM", keys, init, None)
    try:
        assert temporary and len(calls) == 1 and (dst2 / HEAD_FILE).is_symlink()
    finally:
        import shutil

        shutil.rmtree(dst2)
    with pytest.raises(ValueError, match="must not be the model folder"):
        build_overlay(src, "TempoQwen2ForCausalLM", keys, init, src)


# --------------------------------------------------------------------------- small helpers


def test_module_of_groups_what_must_be_sent_together():
    assert _module_of("model.layers.3.self_attn.q_proj.weight") == "model.layers.3"
    assert _module_of("model.layers.3.mlp.down_proj.weight") == "model.layers.3"
    assert _module_of("model.embed_tokens.weight") == "model.embed_tokens"
    assert _module_of("lm_head.weight") == "lm_head"
    assert _module_of("temperature_head.fc2.bias") == "temperature_head.fc2"


def test_version_check():
    check_version("0.32.0")  # the CPU build
    check_version("0.33.0")  # GPU builds
    for unread in ("0.31.2", "0.34.0", "0.40.1"):
        with pytest.raises(ImportError, match="not supported"):
            check_version(unread)


def test_tempo_class_subclasses_the_resolved_architecture():
    from vllm import ModelRegistry

    from rollout.vllm_model import TempoModelMixin, register_architecture, tempo_model_class

    name = register_architecture("Qwen2ForCausalLM")
    assert name == "TempoQwen2ForCausalLM" and name in ModelRegistry.get_supported_archs()
    cls = ModelRegistry._try_load_model_cls(name)
    assert issubclass(cls, TempoModelMixin) and cls.__mro__[2].__name__ == "Qwen2ForCausalLM"
    assert cls is tempo_model_class(cls.__mro__[2])
    with pytest.raises(ValueError, match="no model class"):
        register_architecture("NoSuchModelForCausalLM")


# --------------------------------------------------------------------------- plain RPC payloads


def test_tensors_cross_as_plain_data_and_back_exactly():
    """What vLLM's msgpack carries between processes: only plain types, tensors rebuilt bit for
    bit."""
    import msgspec

    from rollout.vllm_payload import pack, pack_state, unpack, unpack_state

    tensors = {"w": torch.randn(3, 4), "b16": torch.randn(5).bfloat16(), "s": torch.tensor(2.5),
               "empty": torch.zeros(0, 2), "view": torch.arange(6).reshape(2, 3)[:, 1:]}
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(pack_state(tensors)))  # untyped decode
    back = unpack_state(wire)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k
    same = torch.ones(2)
    assert unpack(same) is same  # in-process: tensors pass as they are
    with pytest.raises(TypeError, match="cannot send"):
        pack(torch.zeros(2, dtype=torch.complex64))
