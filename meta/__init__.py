"""Sampling-temperature strategies behind one interface (see meta/base.py and
docs/algorithms.md §2-§4).

Pure torch: importing this package pulls in nothing heavier than torch.
"""

from meta.base import RowContext, TempDecision, TemperatureStrategy
from meta.heuristics import EAD, EDT, FixedTemperature, LinearSchedule, StagedSchedule
from meta.introllm import IntroLLM, TemperatureHead
from meta.phases import phase_for_step
from meta.registry import STRATEGIES, build_strategy
from meta.tampo import TAMPO, sparsemax

__all__ = [
    "RowContext", "TempDecision", "TemperatureStrategy", "FixedTemperature", "LinearSchedule",
    "StagedSchedule", "EAD", "EDT", "TAMPO", "IntroLLM", "TemperatureHead", "sparsemax",
    "phase_for_step", "build_strategy", "STRATEGIES",
]
