"""The vLLM engine's parts without an engine: row tracking, the per-row runtime, the overlay folder.

Fast (no model, no engine start); imports vLLM for its logits-processor types.
"""

from __future__ import annotations

import json

import pytest
import torch


from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from meta.base import RowContext, TempDecision, TemperatureStrategy  # noqa: E402
from meta.introllm import TemperatureHead  # noqa: E402
from rollout.vllm_compat import check_version  # noqa: E402
from rollout.vllm_engine import _module_of  # noqa: E402
from rollout.vllm_model import TempoRuntime  # noqa: E402
from rollout.vllm_overlay import (HEAD_FILE, INDEX_FILE, build_overlay, checkpoint_keys,  # noqa: E402
                                  head_keys, save_head)
from rollout.vllm_rows import BASE_TAU, KEY, RowMismatch, RowRef, V1RowTracker  # noqa: E402


def params(key, tau=1.0):
    return SamplingParams(extra_args={KEY: key, BASE_TAU: tau})


def update(size, removed=(), added=(), moved=()):
    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved))


# --------------------------------------------------------------------------- V1RowTracker


def test_tracker_follows_adds_removes_moves_and_swaps():
    t = V1RowTracker(None, torch.device("cpu"), False)
    assert t.rows(4) is None  # no requests yet: warm-up batches pass through
    outs = {k: [] for k in "abcd"}
    t.update_state(update(3, added=[(0, params("a", 0.7), [1], outs["a"]),
                                    (1, params("b"), [1], outs["b"]),
                                    (2, params("c"), [1], outs["c"])]))
    assert [r.key for r in t.rows(3)] == ["a", "b", "c"]
    assert t.rows(3)[0].base_tau == pytest.approx(0.7)
    outs["a"] += [5, 6]  # live reference: two tokens generated -> next row samples position 2
    assert t.rows(3)[0].position == 2
    # b finishes; condense moves the last request into its slot
    t.update_state(update(2, removed=[1], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    assert [r.key for r in t.rows(2)] == ["a", "c"]
    # an attention backend reorders (decode-first): swap
    t.update_state(update(2, moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert [r.key for r in t.rows(2)] == ["c", "a"]
    # a preempted request comes back with tokens already generated
    outs["d"] += [9, 9, 9]
    t.update_state(update(3, added=[(2, params("d"), [1], outs["d"])]))
    assert [(r.key, r.position) for r in t.rows(3)] == [("c", 0), ("a", 2), ("d", 3)]
    assert t.readded == 1  # "d" (re-)entered with tokens already generated
    t.update_state(None)  # no change
    assert len(t.rows(3)) == 3
    with pytest.raises(RowMismatch, match="got 5 rows"):
        t.rows(5)


def test_tracker_slot_reused_in_same_step():
    t = V1RowTracker(None, torch.device("cpu"), False)
    t.update_state(update(2, added=[(0, params("a"), [], []), (1, params("b"), [], [])]))
    # a finishes and a new request takes its slot (removed index popped by the add)
    t.update_state(update(2, added=[(0, params("n"), [], [])]))
    assert [r.key for r in t.rows(2)] == ["n", "b"]


# --------------------------------------------------------------------------- TempoRuntime


class FakeRows:
    def __init__(self, rows):
        self._rows = rows
        self.readded = 0

    def rows(self, n):
        if n != len(self._rows):
            raise RowMismatch(f"{n} != {len(self._rows)}")
        return self._rows


class PrevPlusOne(TemperatureStrategy):
    """tau_t = tau_{t-1} + 0.1: checks the previous-tau lookup."""

    name = "prevplus"
    per_token = True

    def select(self, ctx: RowContext) -> TempDecision:
        return TempDecision(tau=ctx.prev_tau + 0.1)


def test_runtime_prev_tau_records_and_rewrites():
    out_a, out_b = [], []
    rows = [RowRef("a", 1.0, False, out_a), RowRef("b", 0.5, False, out_b)]
    rt = TempoRuntime(FakeRows(rows), PrevPlusOne())
    rt.begin(step=0, seed=0)
    logits = torch.ones(2, 4)  # (N, V)
    for _ in range(3):
        got = rt.apply(torch.zeros(2, 8), logits)
        out_a.append(1)
        out_b.append(1)
    rt.apply(torch.zeros(2, 8), logits)  # position 3 ...
    assert rt.rewritten == 0
    # ... again, as for a partial prefill chunk whose token was dropped: the later write wins
    rt.apply(torch.zeros(2, 8), logits)
    assert rt.rewritten == 2
    res = rt.collect(["a", "b"])
    taus_a = [r[0] for r in res["records"]["a"]]
    taus_b = [r[0] for r in res["records"]["b"]]
    assert taus_a == pytest.approx([1.1, 1.2, 1.3, 1.4])
    assert taus_b == pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert not res["anomalies"]
    torch.testing.assert_close(got, logits / torch.tensor([[1.3], [0.8]]))


class Broken(TemperatureStrategy):
    name = "broken"

    def select(self, ctx):
        return TempDecision(tau=torch.full_like(ctx.base_tau, float("nan")))


def test_runtime_counts_bad_tau_and_row_mismatch_without_raising():
    rows = [RowRef("a", 0.9, False, []), RowRef("g", 1.3, True, [])]
    rt = TempoRuntime(FakeRows(rows), Broken())
    rt.begin(0, None)
    out = rt.apply(torch.zeros(2, 8), torch.ones(2, 4))
    # NaN replaced by the base tau (and reported); greedy rows always use tau = 1
    torch.testing.assert_close(out, torch.tensor([[1 / 0.9] * 4, [1.0] * 4]))
    logits = torch.ones(3, 4)
    assert rt.apply(torch.zeros(3, 8), logits) is logits  # mismatch: pass-through, reported
    res = rt.collect(["a", "g"])
    assert res["anomalies"] == {"bad_tau": 1, "row_mismatch": 1}
    assert res["records"]["g"][0][0] == 1.0


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
    assert json.loads((dst / "config.json").read_text())["architectures"] == ["TempoQwen2ForCausalLM"]
    assert (dst / "model.safetensors").is_symlink() and (dst / "tokenizer.json").is_symlink()
    assert (dst / HEAD_FILE).is_file() and not (dst / HEAD_FILE).is_symlink()
    assert checkpoint_keys(dst) == keys | set(head_keys())  # the index lists the head, if sharded


def test_overlay_reuses_its_head_and_prefers_the_folders(tmp_path):
    src = _fake_model(tmp_path / "m")
    calls = []

    def init():
        calls.append(1)
        return _head()

    dst, _ = build_overlay(src, "TempoQwen2ForCausalLM", checkpoint_keys(src), init, tmp_path / "ov")
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
    check_version("0.32.0")
    with pytest.raises(ImportError, match="not supported"):
        check_version("0.40.1")


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
