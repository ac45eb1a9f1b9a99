"""IntroLLM's coordinate-ascent schedule: which parameters a training step updates
(docs/algorithms.md §2).

* "alternate": blocks of `phase_len` steps alternate between the phi-phase (temperature head,
  backbone frozen) and the theta-phase (backbone, head frozen), with fresh rollouts per phase;
  `phi_first` (our default: True) picks the first block.
* "joint": both phases on the same rollouts in every step (an ablation) -> "joint".
"""

from __future__ import annotations

SCHEDULES = ("alternate", "joint")


def phase_for_step(step: int, schedule: str = "alternate", phase_len: int = 1,
                   phi_first: bool = True) -> str:  # phi_first=True: (our default)
    """Return "theta", "phi" or "joint" for 0-based training `step`.

    Example (alternate, phase_len=2, phi_first=True): steps 0,1 -> phi; 2,3 -> theta; 4,5 -> phi.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule ({schedule!r}) must be one of {list(SCHEDULES)}; "
                         f"set e.g. schedule='alternate'")
    if int(phase_len) != phase_len or phase_len < 1:
        raise ValueError(f"phase_len ({phase_len}) must be an integer >= 1; set e.g. phase_len=1")
    if step < 0:
        raise ValueError(f"step ({step}) must be >= 0 (0-based training step)")
    if schedule == "joint":
        return "joint"
    first, second = ("phi", "theta") if phi_first else ("theta", "phi")
    return first if (step // phase_len) % 2 == 0 else second
