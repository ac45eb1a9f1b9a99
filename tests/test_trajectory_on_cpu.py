"""TrajectoryBatch: the schema check catches what would silently corrupt a step."""

from __future__ import annotations

import pytest
import torch

from rollout.base import ResponseRecord, RolloutRequest, assemble_batch
from rollout.trajectory import SchemaError, TrajectoryBatch


def make(lengths=(3, 1, 2), prompt_lengths=(2, 4, 3), phi=True) -> TrajectoryBatch:
    reqs = [RolloutRequest(list(range(1, n + 1)), g, 1.0, f"p{g}", "arith", "3", 2)
            for g, n in enumerate(prompt_lengths)]
    recs = [ResponseRecord([7] * n, [0.5 + 0.1 * i for i in range(n)], [-1.0] * n,
                           "stop", "x", *(([1.0] * n, [0.3] * n, [-0.2] * n) if phi else ()))
            for n in lengths]
    return assemble_batch(reqs, recs, pad_id=0, step=5)


def test_assemble_pads_prompts_left_and_responses_right():
    b = make()
    assert b.prompt_ids.shape == (3, 4) and b.response_ids.shape == (3, 3)
    assert b.prompt_mask[0].tolist() == [False, False, True, True]
    assert b.response_mask[1].tolist() == [True, False, False]
    assert b.tau[0].tolist() == pytest.approx([0.5, 0.6, 0.7]) and b.tau[1, 1] == 0
    ids, mask = b.sequences()
    assert ids.shape == (3, 7) and mask.sum().item() == 9 + 6


def test_a_lost_tau_is_caught_at_assembly():
    rec = ResponseRecord([7, 7, 7], [1.0, 1.0], [-1.0] * 3, "stop")
    with pytest.raises(ValueError, match="3 tokens but 2 recorded tau"):
        assemble_batch([RolloutRequest([1], 0, 1.0)], [rec], pad_id=0)


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: setattr(b, "tau", b.tau[:, :2]), "tau"),
    (lambda b: b.tau.__setitem__((0, 1), 0.0), "finite and > 0"),
    (lambda b: b.tau.__setitem__((0, 1), float("nan")), "finite and > 0"),
    (lambda b: b.response_mask.__setitem__((1, 2), True), "contiguous"),
    (lambda b: setattr(b, "tasks", b.tasks[:2]), "tasks"),
    (lambda b: b.gate.__setitem__((0, 0), 0.5), "gate"),
    (lambda b: setattr(b, "rewards", torch.zeros(2)), "rewards"),
])
def test_validate_rejects_corruption(corrupt, message):
    b = make()
    corrupt(b)
    with pytest.raises(SchemaError, match=message):
        b.validate()


def test_select_split_concat_round_trip():
    b = make()
    b.rewards = torch.tensor([1.0, 0.0, 1.0])
    parts = make(lengths=(3, 1, 2, 2), prompt_lengths=(2, 4, 3, 1)).split(2)
    assert [len(p) for p in parts] == [2, 2]
    sub = b.select([2, 0])
    assert sub.problem_ids == ["p2", "p0"] and sub.rewards.tolist() == [1.0, 1.0]
    back = TrajectoryBatch.concat([b.select([0]), b.select([1, 2])]).validate()
    assert torch.equal(back.response_ids, b.response_ids) and back.problem_ids == b.problem_ids
    narrow = make(lengths=(1,), prompt_lengths=(1,))
    wide = TrajectoryBatch.concat([narrow, make(phi=True)]).validate()
    assert wide.response_ids.shape == (4, 3) and wide.prompt_ids.shape == (4, 4)
    with pytest.raises(SchemaError, match="cannot be split"):
        b.split(2)
    with pytest.raises(SchemaError, match="some batches but not all"):
        TrajectoryBatch.concat([make(phi=False), make(phi=True)])


def test_a_batch_survives_a_safe_checkpoint_round_trip_with_its_policy_version(tmp_path):
    """The batch in flight at a checkpoint is stored as plain values and read back with
    torch.load(weights_only=True): equal field by field, its weight version kept."""
    batch = make()
    batch.policy_version, batch.stats = 7, {"gen_s": 0.5}
    batch.rewards = torch.tensor([1.0, 0.0, 1.0])
    torch.save({"in_flight": batch.to_state()}, tmp_path / "x.pt")
    back = TrajectoryBatch.from_state(torch.load(tmp_path / "x.pt", weights_only=True)["in_flight"])
    for name, value in batch.to_state().items():
        got = getattr(back, name)
        assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value, name
    assert back.policy_version == 7


def test_concat_keeps_the_oldest_policy_version():
    a, b = make(), make()
    a.policy_version, b.policy_version = 3, 2
    assert TrajectoryBatch.concat([a, b]).policy_version == 2
    assert a.select([0, 1]).policy_version == 3
