"""Heuristic strategies, the shared select() path and the registry (docs/algorithms.md §4)."""

import math

import pytest
import torch

from meta import (
    EAD,
    EDT,
    FixedTemperature,
    LinearSchedule,
    RowContext,
    StagedSchedule,
    build_strategy,
)
from meta.registry import STRATEGIES


def ctx(positions, base=1.0, step=0, logits=None):
    n = len(positions)
    return RowContext(positions=torch.tensor(positions), prev_tau=torch.full((n,), base),
                      base_tau=torch.full((n,), base), step=step, logits=logits)


def test_fixed_plan_and_select_return_base_tau():
    s = FixedTemperature(1.2)
    plan = s.plan(step=7, num_prompts=3)
    assert plan.shape == (3,) and plan.dtype == torch.float32
    assert torch.all(plan == torch.tensor(1.2))
    # scalar strategies go through the same per-token path and keep the planned base tau
    c = RowContext(positions=torch.tensor([0, 5]), prev_tau=torch.tensor([9.0, 9.0]),
                   base_tau=torch.tensor([1.2, 0.7]))
    d = s.select(c)
    assert torch.equal(d.tau, torch.tensor([1.2, 0.7])) and d.gate is None and d.logp_phi is None
    assert s.state_dict() == {}


def test_linear_schedule_points():
    s = LinearSchedule(total_steps=201, t_start=0.9, t_end=1.5)
    assert s.temperature_at(0) == pytest.approx(0.9)
    assert s.temperature_at(100) == pytest.approx(1.2)  # 0.9 + 0.6 * 100/200
    assert s.temperature_at(200) == pytest.approx(1.5)
    assert s.temperature_at(10_000) == pytest.approx(1.5)  # clamped to S - 1
    assert s.temperature_at(-3) == pytest.approx(0.9)
    assert LinearSchedule(total_steps=1).temperature_at(5) == pytest.approx(0.9)  # S = 1 -> t_start
    assert torch.allclose(s.plan(50, 2), torch.tensor([1.05, 1.05]))  # 0.9 + 0.6 * 50/200


def test_staged_schedule_points_and_validation():
    s = StagedSchedule(temperatures=(1.4, 1.45, 1.5), boundaries=(100, 200))
    assert [s.temperature_at(t) for t in (0, 99, 100, 199, 200, 999)] == [1.4, 1.4, 1.45, 1.45,
                                                                          1.5, 1.5]
    with pytest.raises(ValueError, match="len\\(temperatures\\) - 1 = 2"):
        StagedSchedule(temperatures=(1.4, 1.45, 1.5), boundaries=(100,))
    with pytest.raises(ValueError, match="strictly increasing"):
        StagedSchedule(temperatures=(1.4, 1.45, 1.5), boundaries=(200, 100))
    with pytest.raises(ValueError, match="strictly increasing"):
        StagedSchedule(temperatures=(1.4, 1.5), boundaries=(0,))


def test_ead_values():
    s = EAD()  # tau_max 1.2, tau_min 0.1, d0 200, warm-up 10 tokens
    tau = s.select(ctx([0, 9, 10, 200, 2000], step=0)).tau
    # t < 10 -> 1.0; t = 10: 1 + 1.2 - exp(10/200) = 2.2 - 1.05127 = 1.14873
    # t = 200: 2.2 - e = -0.518 -> tau_min 0.1; t = 2000: -> 0.1
    assert tau.tolist() == pytest.approx([1.0, 1.0, 2.2 - math.exp(0.05), 0.1, 0.1], abs=1e-6)
    # step 100: d = 200 + 5 * 100 = 700; t = 350 -> 2.2 - exp(0.5) = 0.55128
    assert s.select(ctx([350], step=100)).tau.item() == pytest.approx(2.2 - math.exp(0.5), abs=1e-6)
    assert s.decay_length(10_000) == 40000.0  # capped
    assert s.per_token and torch.all(s.plan(0, 4) == 1.0)


def test_edt_values_and_zero_entropy():
    s = EDT()  # t0 0.8, theta 1, base 0.8, clamp [0.1, 1.5]
    V = 8
    uniform = torch.zeros(1, V)  # H = log 8 = 2.0794 -> T = 0.8 * 0.8^(1/2.0794) = 0.7196
    one_hot = torch.full((1, V), -float("inf"))
    one_hot[0, 3] = 0.0  # H = 0 -> theta / H -> inf -> T -> 0 -> clamped to tau_min
    peaked = torch.tensor([[30.0] + [0.0] * (V - 1)])  # H ~ 0 without being exactly 0
    tau = s.select(ctx([0, 1, 2], logits=torch.cat([uniform, one_hot, peaked]))).tau
    assert tau[0].item() == pytest.approx(0.8 * 0.8 ** (1 / math.log(V)), rel=1e-5)
    assert tau[1].item() == pytest.approx(0.1) and tau[2].item() == pytest.approx(0.1)
    assert not torch.isnan(tau).any()
    # entropy 1 nat -> 0.8 * 0.8 = 0.64 exactly
    assert s.temperature_from_entropy(torch.tensor([1.0])).item() == pytest.approx(0.64, rel=1e-6)
    with pytest.raises(ValueError, match="needs ctx.logits"):
        s.select(ctx([0]))


@pytest.mark.parametrize("cls,kwargs,message", [
    (EAD, dict(tau_min=1.7, tau_max=1.5),
     r"tau_min \(1.7\) must be < tau_max \(1.5\); set e.g. tau_min=0.1"),
    (EDT, dict(tau_min=0.0), r"tau_min \(0.0\) must be > 0"),
    (FixedTemperature, dict(temperature=-1.0), r"temperature \(-1.0\) must be > 0"),
    (LinearSchedule, dict(total_steps=0), r"total_steps \(0\) must be an integer >= 1"),
    (EDT, dict(theta=-1.0), r"theta \(-1.0\) must be >= 0"),
])
def test_bad_arguments_raise_clear_errors(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_registry_builds_every_name_and_rejects_unknown():
    assert sorted(STRATEGIES) == ["ead", "edt", "fixed", "introllm", "linear", "staged", "tampo"]
    extra = {"linear": dict(total_steps=10), "staged": dict(boundaries=(5, 10)),
             "introllm": dict(hidden_size=8)}
    for name in STRATEGIES:
        s = build_strategy(name, **extra.get(name, {}))
        assert s.name == name
        s.load_state_dict(s.state_dict())  # every strategy round-trips its (possibly empty) state
    with pytest.raises(ValueError,
                       match=r"unknown temperature strategy 'greedy'; supported: \['ead'"):
        build_strategy("greedy")


@pytest.mark.parametrize("name, kwargs", [
    ("fixed", dict(temperature=1.3)), ("linear", dict(total_steps=10, t_end=1.2)),
    ("staged", dict(boundaries=(2,), temperatures=(1.4, 0.6))),
    ("tampo", dict(candidates=(0.6, 0.8))),
    ("ead", dict(d0=40.0)), ("edt", dict()), ("introllm", dict(hidden_size=16, tau_max=1.2))])
def test_spec_rebuilds_the_same_strategy_from_plain_data(name, kwargs):
    """A vLLM worker process rebuilds the strategy from its spec (msgpack: lists, no tuples)."""
    import copy
    import json

    from meta.registry import build_strategy, strategy_from_spec

    strategy = build_strategy(name, **kwargs)
    spec = json.loads(json.dumps(strategy.spec()))  # plain data only
    rebuilt = strategy_from_spec(spec)
    assert type(rebuilt) is type(strategy) and rebuilt.spec() == spec
    for step in (0, 3, 50):
        plans = [s.plan(step, 4, torch.Generator().manual_seed(step)) for s in (strategy, rebuilt)]
        assert torch.equal(*plans)
    assert copy.deepcopy(strategy).spec() == strategy.spec()  # copies keep their spec
    if name == "introllm":
        strategy.temperature_mode = "mean"  # an evaluation switch made after construction
        assert strategy_from_spec(strategy.spec()).temperature_mode == "mean"
    with pytest.raises(ValueError, match="strategy spec"):
        strategy_from_spec({"name": name})
