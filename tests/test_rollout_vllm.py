"""The vLLM engine with a per-token temperature, on a real (CPU) vLLM and a tiny Qwen2.

One engine (module scope) runs under stress settings that force chunked prefill (prompts longer
than ``max_num_batched_tokens``) and preemption (a KV cache of a few blocks for many long
requests). Every check compares with a transformers forward of the same sequences:

    logp_vllm[t] == log_softmax(z_t / tau_t)[y_t]          (z_t from transformers, 1e-4)
    logp_phi[t]  == TemperatureHead.log_prob(h_t, c_t, z_t, t == 0)

and the number of recorded tau equals the number of generated tokens of every response.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from launch.build_model import TinyModelSpec, build
from meta.base import RowContext
from meta.introllm import IntroLLM
from meta.registry import build_strategy
from rollout.base import RolloutRequest
from tests.conftest import VLLM_SHAPES, vllm_shapes

pytestmark = pytest.mark.slow

# head_dim = 64 / 2 = 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... (not 16)
SPEC = TinyModelSpec(sft_examples=1000, sft_steps=3, batch_size=8, hidden_size=64,
                     intermediate_size=128, num_layers=1, num_heads=2, num_kv_heads=1)
HIDDEN = SPEC.hidden_size
MAX_NEW = 40
MAX_LEN = 256
BATCHED_TOKENS = 64  # < every prompt below: each prefill is split into chunks
ENGINE_KW = dict(max_model_len=MAX_LEN, max_new_tokens=MAX_NEW, max_num_seqs=8,
                 max_num_batched_tokens=BATCHED_TOKENS, block_size=32,
                 num_gpu_blocks_override=12,  # 384 tokens of KV for 8 running requests of ~200
                 disable_log_stats=False)  # so that get_metrics() counts preemptions
EOS_PROB = 0.04  # the fixture model's mean P(EOS) per token, so that some responses stop early


def _boost_eos(folder, target: float = EOS_PROB) -> None:
    """Raise the EOS logit of the (tied-embedding) model so that early stops happen in tests.

    E[eos] += a * m, m = the mean direction of final hidden states; a is bisected so that the mean
    P(EOS) over random contexts is ``target``.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    eos = model.config.eos_token_id
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        h = model.model(input_ids=torch.randint(3, vocab, (4, 96), generator=g)).last_hidden_state
        h = h.reshape(-1, h.shape[-1])  # (N, d)
        m = h.mean(0) / h.mean(0).norm()
        emb = model.get_input_embeddings().weight  # (V, d), tied with lm_head
        logits, proj = h @ emb.T, h @ m  # (N, V), (N,)
        lo, hi = 0.0, 1000.0
        for _ in range(60):
            a = (lo + hi) / 2
            z = logits.clone()
            z[:, eos] += a * proj
            lo, hi = (a, hi) if z.softmax(-1)[:, eos].mean() < target else (lo, a)
        emb[eos] += a * m
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_vllm") / "model"
    build(SPEC, out)
    _boost_eos(out)
    return out


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=vllm_shapes())
def engine(request, model_dir, tmp_path_factory):
    """One engine per shape (module scope: the tests below run against each in turn)."""
    from rollout.vllm_engine import VLLMEngine
    from rollout.weight_transfer import BACKEND

    overlay = tmp_path_factory.mktemp("overlay")  # head_dir: the overlay folder lives here
    eng = VLLMEngine(str(model_dir), IntroLLM(hidden_size=HIDDEN), seed=0, head_dir=str(overlay),
                     weight_transfer=BACKEND, **VLLM_SHAPES[request.param], **ENGINE_KW)
    yield eng
    eng.close()


class EngineClient:
    """vLLM's VLLMWeightSyncClient over one engine of this process (the run's is
    rollout.weight_transfer.RolloutSyncClient, over Ray actors)."""

    def __init__(self, engine):
        self.engine = engine

    def init_weight_transfer_engine(self, init_info):
        self.engine.init_weight_transfer(init_info)

    def start_weight_update(self):
        self.engine.start_weight_update()

    def update_weights(self, update_info):
        self.engine.update_weights(update_info)

    def finish_weight_update(self, weight_version=None):
        self.engine.finish_weight_update()


@pytest.fixture(scope="module")
def transfer(engine):
    """Collective sync into ``engine``: the gloo twin of vLLM's NCCL trainer engine (this
    process is trainer rank 0) over a source of the dict given, layer by layer."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource, layerwise_groups
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    from learner.ds_utils import free_port
    from rollout.weight_transfer import BACKEND, register, trainer_init_info

    class DictSource(WeightSource):
        weights: dict = {}

        def metadata(self):
            return [ParamMeta(k, self.weights[k].dtype, tuple(self.weights[k].shape))
                    for g in layerwise_groups(list(self.weights)) for k in g]

        def __iter__(self):
            return ((m.name, self.weights[m.name]) for m in self.metadata())

    register()
    source = DictSource()
    world = 1 + engine.shape["tensor_parallel_size"]
    trainer = None

    def sync(weights, packed: bool = False):
        """(packed: vLLM's packed-buffer mode instead of the CPU default, tensor by tensor;
        both sides learn it when the group forms, so a change forms it again)"""
        nonlocal trainer
        if trainer is None or trainer.packed != packed:
            if trainer is not None:
                trainer.shutdown()
            info = trainer_init_info(BACKEND, 0, "127.0.0.1", free_port(), world)
            info.packed = packed
            trainer = WeightTransferTrainerFactory.trainer_init(info, client=EngineClient(engine),
                                                                source=source)
        source.weights = dict(weights)
        trainer.send_weights()

    yield sync
    trainer.shutdown()


SYNC_PATHS = tuple(os.environ.get("TEMPO_TEST_SYNC_PATHS", "object_store,collective").split(","))
"""the weight-sync paths the sync tests run ($TEMPO_TEST_SYNC_PATHS narrows them: the V2 shapes,
under Triton's interpreter, run the default collective one; the test that the two paths give the
same weights runs in every shape)"""


@pytest.fixture(params=SYNC_PATHS)
def sync(request, engine, transfer):
    """A weight sync into ``engine`` by either path (object_store: engine.load_weights)."""
    return engine.load_weights if request.param == "object_store" else transfer


def make_requests(n: int, base_tau, seed: int = 0, vocab: int = 300, group: int = 2):
    """n distinct random prompts of 70-200 tokens (ids 3.. avoid the special tokens)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(70, MAX_LEN - MAX_NEW + 1, (n,), generator=g).tolist()
    taus = base_tau if isinstance(base_tau, list) else [base_tau] * n
    return [RolloutRequest(prompt_ids=torch.randint(3, vocab, (k,), generator=g).tolist(),
                           group_index=i // group, base_tau=float(taus[i]))
            for i, k in enumerate(lengths)]


@torch.no_grad()
def recompute(hf_model, batch):
    """Per response: (logits (T, V), hidden (T, d)) at the positions that produced each token."""
    out = []
    for i in range(len(batch)):
        p = batch.prompt_ids[i][batch.prompt_mask[i]]
        r = batch.response_ids[i][batch.response_mask[i]]
        ids = torch.cat([p, r])[None]
        h = hf_model.model(input_ids=ids).last_hidden_state[0]  # (Lp+T, d), after the final norm
        h = h[len(p) - 1: len(p) - 1 + len(r)]  # (T, d): h_t produces y_t
        out.append((hf_model.lm_head(h), h))
    return out


def preemptions(engine) -> float:
    return sum(m.value for m in engine.llm.get_metrics() if m.name == "vllm:num_preemptions")


def check_counts(batch, eos_id):
    lengths = batch.response_mask.sum(-1)
    for i in range(len(batch)):
        n = int(lengths[i])
        assert n >= 1
        ids = batch.response_ids[i, :n].tolist()
        if batch.finish_reasons[i] == "stop":
            assert ids[-1] == eos_id and eos_id not in ids[:-1]
        else:
            assert batch.finish_reasons[i] == "length" and n == MAX_NEW and eos_id not in ids
        # one tau per generated token (the EOS included), none beyond
        assert torch.all(batch.tau[i, :n] > 0) and torch.all(batch.tau[i, n:] == 0)


def check_logprobs(hf_model, batch, tol=1e-4):
    """vLLM's sampled-token log-prob == log_softmax(z / tau)[y]; returns (logits, hidden) list."""
    rec = recompute(hf_model, batch)
    untempered_gap = 0.0
    for i, (logits, _) in enumerate(rec):
        n = logits.shape[0]
        y = batch.response_ids[i, :n]
        tau = batch.tau[i, :n]
        want = torch.log_softmax(logits / tau[:, None], -1).gather(-1, y[:, None]).squeeze(-1)
        got = batch.logp_rollout[i, :n]
        torch.testing.assert_close(got, want, atol=tol, rtol=0)
        plain = torch.log_softmax(logits, -1).gather(-1, y[:, None]).squeeze(-1)
        untempered_gap = max(untempered_gap, float((got - plain).abs().max()))
    return rec, untempered_gap


# --------------------------------------------------------------------------- engine lifecycle


def test_folder_with_head_weights_loads_them_and_close_cleans_up(model_dir, tmp_path):
    """Runs before the shared engine starts: an own engine over a folder that has head weights."""
    import shutil

    from meta.introllm import TemperatureHead
    from rollout.vllm_engine import VLLMEngine
    from rollout.vllm_overlay import HEAD_FILE, save_head

    folder = tmp_path / "with_head"
    shutil.copytree(model_dir, folder)
    torch.manual_seed(5)
    saved = TemperatureHead(HIDDEN).state_dict()
    save_head(folder, saved)
    config_before = (folder / "config.json").read_text()
    # its own (different) init: the engine uses the folder's
    strategy = IntroLLM(hidden_size=HIDDEN)
    own = copy.deepcopy(strategy.head.state_dict())
    eng = VLLMEngine(str(folder), strategy, max_model_len=MAX_LEN, max_new_tokens=8, max_num_seqs=4)
    try:
        overlay = eng._overlay
        assert overlay != folder and (overlay / HEAD_FILE).is_symlink()
        got = eng.head_state_dict()
        for k, v in saved.items():
            torch.testing.assert_close(got[k], v, atol=0, rtol=0)
            # the caller's strategy is only a spec for the engine: left as it was
            torch.testing.assert_close(strategy.head.state_dict()[k], own[k], atol=0, rtol=0)
        batch = eng.generate(make_requests(2, 1.0)[:2], step=0, seed=0)
        assert batch.gate is not None and batch.response_mask.sum() > 0
    finally:
        eng.close()
    assert not overlay.exists()  # temporary overlay removed
    assert (folder / "config.json").read_text() == config_before  # the user's folder untouched


def test_a_call_waiting_on_an_engine_core_that_dies_raises_instead_of_hanging(model_dir):
    """The engine core (own process) is frozen, a call to it waits, then the process is killed:
    the call raises vLLM's EngineDeadError (it used to wait forever, so a killed engine-core
    process could hang a run mid weight sync), and the engine says it is not alive."""
    import signal
    import threading

    from vllm.v1.engine.exceptions import EngineDeadError

    from rollout.vllm_engine import VLLMEngine

    eng = VLLMEngine(str(model_dir), IntroLLM(hidden_size=HIDDEN), max_model_len=MAX_LEN,
                     max_new_tokens=8, max_num_seqs=4, runner="v1", engine_core="process")
    try:
        (proc,) = eng.llm.llm_engine.engine_core.resources.engine_manager.processes
        os.kill(proc.pid, signal.SIGSTOP)  # the call below is sent and waits for an answer
        got: list = []
        call = threading.Thread(target=lambda: got.append(_outcome(eng.head_state_dict)))
        call.start()
        call.join(2)
        assert call.is_alive() and not got  # waiting on the frozen process
        os.kill(proc.pid, signal.SIGKILL)
        call.join(60)
        assert not call.is_alive(), "the call still waits on a dead engine core"
        assert isinstance(got[0], EngineDeadError), got
        assert not eng.alive()
    finally:
        eng.close()


@pytest.mark.slow
def test_an_engine_core_that_dies_before_a_weight_sync_restarts_the_rollout_actor(model_dir):
    """A rollout actor whose engine core (own process) was killed is sent weights: the actor
    exits, Ray restarts it and retries the sync on a fresh engine, and that engine refuses to
    generate until the trainer's full resync, the path a death during a generation takes (before,
    the sync raised EngineDeadError from a live actor and the run stopped)."""
    import signal

    import psutil
    import ray

    from rollout.config import RolloutConfig
    from rollout.worker import RolloutWorker

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": root}})
    try:
        cfg = RolloutConfig(engine="vllm", vllm_runner="v1", engine_core="process",
                            max_new_tokens=8, max_num_seqs=4)
        actor = ray.remote(RolloutWorker).options(num_cpus=1, max_restarts=1,
                                                  max_task_retries=1).remote(
            str(model_dir), IntroLLM(hidden_size=HIDDEN), cfg)
        pid = ray.get(actor.ping.remote(), timeout=300)
        (core,) = [p for p in psutil.Process(pid).children(recursive=True)
                   if "EngineCore" in " ".join(p.cmdline())]
        os.kill(core.pid, signal.SIGKILL)
        core.wait(30)
        head = _head_keys(IntroLLM(hidden_size=HIDDEN).head.state_dict())
        seconds = ray.get(actor.load_weights.remote(head, 1), timeout=300)
        assert seconds >= 0  # the retried sync, on the restarted actor
        assert ray.get(actor.ping.remote()) != pid
        with pytest.raises(ray.exceptions.RayTaskError, match="StaleWeightsError"):
            ray.get(actor.generate.remote(make_requests(2, 1.0), 0, 0), timeout=300)
    finally:
        ray.shutdown()


def _outcome(fn):
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return err


def _random_model(kind: str, src, out):
    """A random tiny ``kind`` model (qwen3 / llama) with the fixture model's tokenizer."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    base = AutoConfig.from_pretrained(src)
    common = dict(vocab_size=base.vocab_size, hidden_size=HIDDEN, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  max_position_embeddings=512, eos_token_id=base.eos_token_id,
                  bos_token_id=base.bos_token_id, pad_token_id=base.pad_token_id)
    if kind == "qwen3":
        common["head_dim"] = 32
    config = AutoConfig.for_model(kind, **common, tie_word_embeddings=(kind == "qwen3"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges")):
            shutil.copy(f, out / f.name)
    return out


@pytest.mark.parametrize("kind", ["qwen3", "llama"])
def test_other_architectures(model_dir, tmp_path, kind):
    """The Tempo class is made for whatever class vLLM resolves (runs before the shared engine)."""
    from transformers import AutoModelForCausalLM

    from rollout.vllm_engine import VLLMEngine

    folder = _random_model(kind, model_dir, tmp_path / kind)
    strategy = IntroLLM(hidden_size=HIDDEN)
    eng = VLLMEngine(str(folder), strategy, max_model_len=MAX_LEN, max_new_tokens=16,
                     max_num_seqs=4)
    try:
        batch = eng.generate(make_requests(4, 1.0, seed=9), step=0, seed=0)
    finally:
        eng.close()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rec, gap = check_logprobs(model, batch)
    assert gap > 1e-2
    check_introllm_phi(strategy, batch, rec)


# --------------------------------------------------------------------------- every strategy


STRATEGIES = {
    "fixed": dict(temperature=1.3),
    "linear": dict(total_steps=10, t_start=0.7, t_end=1.5),
    "staged": dict(boundaries=(2,), temperatures=(1.4, 0.6)),
    "tampo": dict(candidates=(0.6, 0.8, 1.3)),
    "ead": dict(d0=40.0, warmup_tokens=4),  # tau falls from 1.0 to 0.1 within 40 tokens
    "edt": dict(),
    "introllm": dict(hidden_size=HIDDEN),
}


def strategy_names() -> list[str]:
    """Every strategy; $TEMPO_TEST_VLLM_STRATEGIES narrows it (the V2 shapes run under Triton's
    interpreter: tests/test_rollout_vllm_v2.py keeps one strategy of each kind there)."""
    names = os.environ.get("TEMPO_TEST_VLLM_STRATEGIES", ",".join(STRATEGIES)).split(",")
    assert set(names) <= set(STRATEGIES), names
    return names


@pytest.mark.parametrize("name", strategy_names())
def test_strategy_tau_counts_and_logprobs_match_transformers(engine, hf, name):
    strategy = build_strategy(name, **STRATEGIES[name])
    engine.set_strategy(strategy)
    step, prompts, group = 3, 8, 2
    base = strategy.plan(step, prompts, torch.Generator().manual_seed(1)).repeat_interleave(group)
    seed = 100 + list(STRATEGIES).index(name)  # fresh prompts: no prefix-cache hits from others
    requests = make_requests(prompts * group, base.tolist(), seed=seed)
    before = preemptions(engine)
    batch = engine.generate(requests, step=step, seed=123)

    eos = engine.tokenizer.eos_token_id
    check_counts(batch, eos)
    assert all(len(q.prompt_ids) > BATCHED_TOKENS for q in requests)  # chunked prefill
    assert batch.stats["vllm/rewritten_rows"] > 0  # partial-prefill rows overwritten
    assert preemptions(engine) > before and batch.stats["vllm/readded_rows"] > 0
    rec, gap = check_logprobs(hf, batch)
    assert gap > 1e-2, "tempered and untempered log-probs agree: the check has no teeth"

    mask = batch.response_mask
    if not strategy.per_token:  # scalar strategies keep the planned base tau on every token
        assert torch.equal(batch.tau[mask], base[:, None].expand_as(batch.tau)[mask])
        assert batch.gate is None
    elif name == "ead":
        for i in range(len(batch)):
            n = int(mask[i].sum())
            ctx = RowContext(positions=torch.arange(n), prev_tau=torch.ones(n),
                             base_tau=torch.ones(n), step=step)
            torch.testing.assert_close(batch.tau[i, :n], strategy.select(ctx).tau)
        assert batch.tau[mask].min() < 0.5 < batch.tau[mask].max()
    elif name == "edt":
        for i, (logits, _) in enumerate(rec):
            n = logits.shape[0]
            entropy = torch.distributions.Categorical(logits=logits).entropy()
            torch.testing.assert_close(batch.tau[i, :n], strategy.temperature_from_entropy(entropy),
                                       atol=1e-5, rtol=0)
    else:
        check_introllm(sampling_strategy(engine, strategy), batch, rec)


def sampling_strategy(engine, strategy):
    """A copy of ``strategy`` with the head weights the engine samples with (the engine's
    workers rebuild the strategy from its spec and use the model's head)."""
    copied = copy.deepcopy(strategy)
    copied.load_state_dict(engine.head_state_dict())
    return copied


def check_introllm(strategy: IntroLLM, batch, rec):
    """Head recompute: logp_phi, gate/z/tau consistency, gate forced at position 0."""
    assert batch.gate is not None and batch.z is not None and batch.logp_phi is not None
    n_gate0 = 0
    for i, (_, hidden) in enumerate(rec):
        n = hidden.shape[0]
        gate, z, tau = batch.gate[i, :n], batch.z[i, :n], batch.tau[i, :n]
        forced = torch.arange(n) == 0
        want = strategy.head.log_prob(hidden, gate, z, forced)
        torch.testing.assert_close(batch.logp_phi[i, :n], want, atol=1e-4, rtol=0)
        assert gate[0] == 1
        on = gate == 1
        torch.testing.assert_close(tau[on], strategy.tau_from_z(z[on]))
        prev = torch.cat([batch.base_tau[i:i + 1], tau[:-1]])
        assert torch.equal(tau[~on], prev[~on]) and torch.all(z[~on] == 0)
        n_gate0 += int((~on).sum())
    assert n_gate0 > 0  # the keep branch was exercised
    assert len(set(batch.tau[batch.response_mask].tolist())) > 10  # tau varies per token


def test_each_request_keeps_its_own_base_tau_and_early_stops_happen(engine, hf):
    """Per-request base tau (e.g. TAMPO with granularity=prompt) under the same stress."""
    engine.set_strategy(build_strategy("fixed", temperature=1.0))
    base = torch.linspace(0.6, 1.4, 16)
    batch = engine.generate(make_requests(16, base.tolist(), seed=5), step=0, seed=5)
    assert "stop" in batch.finish_reasons and "length" in batch.finish_reasons
    check_counts(batch, engine.tokenizer.eos_token_id)
    mask = batch.response_mask
    assert torch.equal(batch.tau[mask], base[:, None].expand_as(batch.tau)[mask])
    assert batch.stats["vllm/readded_rows"] > 0
    check_logprobs(hf, batch)
    # texts: one batch decode of the ids (vLLM's detokenizer is off), special tokens dropped
    ids = [batch.response_ids[i][mask[i]].tolist() for i in range(len(batch))]
    decoded = [engine.tokenizer.decode(x, skip_special_tokens=True) for x in ids]
    assert batch.response_texts == decoded
    # real texts (a response that stops at once decodes to "")
    assert sum(map(bool, batch.response_texts)) > len(batch) // 2
    assert len(set(batch.response_texts)) > 1


def test_same_seed_same_batch(engine):
    engine.set_strategy(IntroLLM(hidden_size=HIDDEN))
    requests = make_requests(8, 1.0, seed=21)
    a = engine.generate(requests, step=1, seed=99)
    b = engine.generate(requests, step=1, seed=99)
    c = engine.generate(requests, step=1, seed=100)
    for f in ("response_ids", "tau", "logp_rollout", "gate", "z", "logp_phi"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.tau, c.tau)


def test_every_tensor_parallel_rank_records_the_same_values(engine, hf):
    """Each rank runs the head on its own copy of the hidden states; rank 0's decisions are
    broadcast, and the engine compares every rank's records (a digest of all of them)."""
    engine.set_strategy(IntroLLM(hidden_size=HIDDEN))
    batch = engine.generate(make_requests(6, 1.0, seed=61), step=0, seed=3)
    assert batch.stats["vllm/ranks_agreeing"] == engine.shape["tensor_parallel_size"]
    check_logprobs(hf, batch)  # and the tokens were sampled with the recorded tau


def test_greedy_uses_tau_one(engine, hf):
    engine.set_strategy(IntroLLM(hidden_size=HIDDEN))
    batch = engine.generate(make_requests(4, 1.0, seed=3), step=0, seed=0, greedy=True)
    assert torch.all(batch.tau[batch.response_mask] == 1.0)
    rec, _ = check_logprobs(hf, batch)
    for i, (logits, _) in enumerate(rec):
        assert torch.equal(batch.response_ids[i, :logits.shape[0]], logits.argmax(-1))


def test_headless_folder_is_not_modified(engine, model_dir):
    """The fixture folder has no head: the overlay got one (the strategy's init); the folder not."""
    import json

    from rollout.vllm_overlay import HEAD_FILE

    assert not (model_dir / HEAD_FILE).exists()
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == \
        ["Qwen2ForCausalLM"]
    assert (engine._overlay / HEAD_FILE).is_file()
    assert json.loads((engine._overlay / "config.json").read_text())["architectures"] == \
        ["TempoQwen2ForCausalLM"]


# --------------------------------------------------------------------------- weight sync


def _head_keys(sd):
    return {f"temperature_head.{k}": v for k, v in sd.items()}


def test_gate_bias_sync_freezes_then_releases_tau(engine, hf, sync):
    strategy = IntroLLM(hidden_size=HIDDEN)
    engine.set_strategy(strategy)
    original = engine.head_state_dict()
    closed = copy.deepcopy(original)
    closed["fc2.bias"][0] = -30.0  # sigmoid(-30) ~ 1e-13: the gate never fires after t = 0
    sync(_head_keys(closed))
    torch.testing.assert_close(engine.head_state_dict()["fc2.bias"], closed["fc2.bias"])
    requests = make_requests(8, 1.0, seed=31)
    batch = engine.generate(requests, step=0, seed=1)
    for i in range(len(batch)):
        n = int(batch.response_mask[i].sum())
        assert batch.gate[i, 0] == 1 and torch.all(batch.gate[i, 1:n] == 0)
        assert torch.all(batch.tau[i, :n] == batch.tau[i, 0])  # every token keeps tau_0
    rec, _ = check_logprobs(hf, batch)
    check_introllm_phi(sampling_strategy(engine, strategy), batch, rec)

    sync(_head_keys(original))
    batch = engine.generate(requests, step=0, seed=1)
    assert batch.gate[:, 1:][batch.response_mask[:, 1:]].sum() > 0  # the gate fires again
    assert len(set(batch.tau[batch.response_mask].tolist())) > 10


def check_introllm_phi(strategy, batch, rec):
    for i, (_, hidden) in enumerate(rec):
        n = hidden.shape[0]
        forced = torch.arange(n) == 0
        want = strategy.head.log_prob(hidden, batch.gate[i, :n], batch.z[i, :n], forced)
        torch.testing.assert_close(batch.logp_phi[i, :n], want, atol=1e-4, rtol=0)


def test_theta_sync_changes_logprobs_and_restoring_returns_them(engine, hf, model_dir, sync):
    from safetensors.torch import load_file

    engine.set_strategy(build_strategy("fixed", temperature=0.8))
    requests = make_requests(8, 0.8, seed=41)
    base = engine.generate(requests, step=0, seed=7)
    theta = load_file(str(model_dir / "model.safetensors"))
    layer = {k: v for k, v in theta.items() if k.startswith("model.layers.0.")}
    g = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.2 * v.std() * torch.randn(v.shape, generator=g) for k, v in layer.items()}
    sync(perturbed)  # one whole decoder layer
    changed = engine.generate(requests, step=0, seed=7)
    assert not torch.equal(changed.logp_rollout, base.logp_rollout)
    hf_perturbed = copy.deepcopy(hf)
    hf_perturbed.load_state_dict(perturbed, strict=False)
    check_logprobs(hf_perturbed, changed)  # the engine runs the new weights exactly

    # a full sync that moves the tied embedding too (what every learner step sends): the
    # engine's packed LM head must follow, or log-probs drift from the learner's
    everything = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=g)
                  for k, v in theta.items()}
    sync(everything)
    moved = engine.generate(requests, step=0, seed=7)
    hf_moved = copy.deepcopy(hf)
    hf_moved.load_state_dict(everything, strict=False)
    check_logprobs(hf_moved, moved)

    sync(theta)  # full state dict back
    restored = engine.generate(requests, step=0, seed=7)
    assert torch.equal(restored.response_ids, base.response_ids)
    torch.testing.assert_close(restored.logp_rollout, base.logp_rollout, atol=1e-6, rtol=0)


def test_both_sync_paths_give_the_engine_the_same_weights(engine, model_dir, transfer):
    """theta and phi moved by a collective sync: the engine then samples and scores exactly as
    after the same weights through the object store."""
    from safetensors.torch import load_file

    engine.set_strategy(IntroLLM(hidden_size=HIDDEN))
    theta = load_file(str(model_dir / "model.safetensors"))
    head = _head_keys(engine.head_state_dict())
    g = torch.Generator().manual_seed(3)
    moved = {k: v + 0.05 * v.std() * torch.randn(v.shape, generator=g)
             for k, v in {**theta, **head}.items()}
    requests = make_requests(8, 1.0, seed=43)
    out = {}
    for path, sync in (("object_store", engine.load_weights), ("collective", transfer),
                       ("collective packed", lambda w: transfer(w, packed=True))):
        sync(moved)
        out[path] = engine.generate(requests, step=0, seed=5)
        engine.load_weights({**theta, **head})  # back to the start between the two
    a = out["object_store"]
    for b in (out["collective"], out["collective packed"]):
        assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.gate, b.gate)
        for name in ("logp_rollout", "tau", "z", "logp_phi"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-6, rtol=0)


def test_load_weights_rejects_partial_modules_and_unknown_names(engine, model_dir):
    """(The collective path checks the names it is sent the same way: VLLMEngine._check_names.)"""
    from safetensors.torch import load_file

    theta = load_file(str(model_dir / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(ValueError, match="part of module"):
        engine.load_weights({q: theta[q]})
    with pytest.raises(ValueError, match="part of module"):
        engine.load_weights({"temperature_head.fc2.bias": torch.zeros(3)})
    with pytest.raises(KeyError, match="not in the model"):
        engine.load_weights({"model.layers.7.mlp.up_proj.weight": torch.zeros(1)})
