"""IntroLLM coordinate-ascent schedule (docs/algorithms.md §2)."""

import pytest

from meta import phase_for_step


def test_alternate_phi_first_every_step():
    assert [phase_for_step(s) for s in range(4)] == ["phi", "theta", "phi", "theta"]


def test_alternate_phase_len_2():
    got = [phase_for_step(s, "alternate", phase_len=2) for s in range(6)]
    assert got == ["phi", "phi", "theta", "theta", "phi", "phi"]


def test_alternate_theta_first():
    got = [phase_for_step(s, "alternate", phase_len=1, phi_first=False) for s in range(3)]
    assert got == ["theta", "phi", "theta"]


def test_joint_always_joint():
    assert {phase_for_step(s, "joint", phase_len=3) for s in range(7)} == {"joint"}


def test_bad_arguments():
    with pytest.raises(ValueError,
                       match=r"schedule \('both'\) must be one of \['alternate', 'joint'\]"):
        phase_for_step(0, "both")
    with pytest.raises(ValueError, match=r"phase_len \(0\) must be an integer >= 1"):
        phase_for_step(0, phase_len=0)
    with pytest.raises(ValueError, match=r"step \(-1\) must be >= 0"):
        phase_for_step(-1)
