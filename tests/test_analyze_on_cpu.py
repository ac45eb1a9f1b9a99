"""The run analyses and report (launch.analyze) on a run folder written by hand."""

from __future__ import annotations

import json

import pytest

from launch.analyze import (
    example_response,
    main,
    tau_by_level,
    tau_by_position,
    top_tau_tokens,
    write_report,
)


def _row(step, level, taus, tokens, reward):
    return {"step": step, "level": level, "tau": taus, "tokens": tokens,
            "token_ids": list(range(len(taus))), "reward": reward, "task": "arith"}


DUMP = [_row(5, 1, [0.5, 0.7], ["1", "."], 1.0), _row(5, 3, [1.0, 1.2, 1.4], ["2", ".", "x"], 0.0),
        _row(5, 3, [0.8, 1.0], ["2", "."], 1.0)]


def test_tau_by_level_position_and_top_tokens_by_hand():
    levels = tau_by_level(DUMP)
    assert levels[1][0] == pytest.approx(0.6) and levels[1][2] == 2
    assert levels[3][0] == pytest.approx((1.0 + 1.2 + 1.4 + 0.8 + 1.0) / 5)
    assert [round(m, 6) for m, _ in tau_by_position(DUMP)] == [round(2.3 / 3, 6),
                                                                round(2.9 / 3, 6), 1.4]
    top = top_tau_tokens(DUMP, k=2, min_count=2)
    assert [t for t, _, _ in top] == [".", "2"]  # "." 0.7,1.2,1.0 -> 0.967; "2" 1.0,0.8 -> 0.9
    assert top[0][1] == pytest.approx(2.9 / 3) and top[0][2] == 3
    assert example_response(DUMP)["level"] == 3  # a correct one from the hardest level


def _write_run(tmp_path, tampo: bool):
    metrics = [{"step": 0, "eval_base/all/avg@4": 0.30, "eval_base/all/pass@4": 0.6,
                "eval_base/all/n": 10.0}]
    for s in range(1, 11):
        row = {"step": s, "critic/score/mean": 0.3 + 0.01 * s, "tau/mean": 1.0 - 0.01 * s,
               "tau/min": 0.5, "tau/max": 1.5, "tau/mean_L1": 0.9, "tau/entropy_corr": 0.2,
               "rollout/planned_temperature": 0.7}
        if tampo:
            row.update({"tampo/pi_T0.60": 0.5 + 0.01 * s, "tampo/pi_T1.00": 0.5 - 0.01 * s})
        metrics.append(row)
    metrics[-1].update({"eval/all/avg@4": 0.41, "eval/all/pass@4": 0.62, "eval/all/n": 10.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (tmp_path / "rollouts").mkdir()
    (tmp_path / "rollouts" / "step_000008.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in DUMP * 10))
    (tmp_path / "resolved_config.yaml").write_text("meta:\n  name: tampo\n")


@pytest.mark.parametrize("tampo", [True, False])
def test_report_has_the_numbers_and_the_plots(tmp_path, tampo):
    _write_run(tmp_path, tampo)
    report = write_report(tmp_path).read_text()
    assert "| all | 10 | 0.300 | 0.410 | 0.600 | 0.620 |" in report
    expected = {"tau_by_level", "tau_along_response", "top_tau_tokens", "tau_over_steps",
                "tau_entropy", "curves"} | ({"tampo_pi"} if tampo else set())
    pngs = {p.stem for p in (tmp_path / "plots").glob("*.png")}
    assert pngs == expected
    assert all((tmp_path / "plots" / f"{n}.png").stat().st_size > 5000 for n in expected)
    for name in expected:
        assert f"](plots/{name}.png)" in report
    assert ("tampo_pi: not drawn (not a TAMPO run)" in report) != tampo
    assert "| `'.'` |" in report and "name: tampo" in report


def test_cli_rejects_a_missing_folder(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "usage: python -m launch.analyze RUN_DIR" in capsys.readouterr().err
