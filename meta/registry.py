"""Build a temperature strategy by name: the one place a config string becomes a strategy object.

Names: fixed, linear, staged, ead, edt, tampo, introllm (docs/algorithms.md §2-§4). The keyword
arguments are the strategy's constructor arguments, passed through unchanged. Another strategy
is added as ``STRATEGIES[cls.name] = cls`` in every process that builds it by name (the run's
driver and actors; vLLM's workers rebuild it from its spec).
"""

from __future__ import annotations

from meta.base import TemperatureStrategy
from meta.heuristics import EAD, EDT, FixedTemperature, LinearSchedule, StagedSchedule
from meta.introllm import IntroLLM
from meta.tampo import TAMPO

STRATEGIES: dict[str, type[TemperatureStrategy]] = {
    cls.name: cls
    for cls in (FixedTemperature, LinearSchedule, StagedSchedule, EAD, EDT, TAMPO, IntroLLM)
}


def build_strategy(name: str, **kwargs) -> TemperatureStrategy:
    """Instantiate the strategy registered as `name` with constructor `kwargs`."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown temperature strategy {name!r}; supported: {sorted(STRATEGIES)}")
    return STRATEGIES[name](**kwargs)


def strategy_from_spec(spec: dict) -> TemperatureStrategy:
    """Rebuild a strategy from `TemperatureStrategy.spec()` (e.g. in a vLLM worker process)."""
    if not isinstance(spec, dict) or set(spec) != {"name", "kwargs"}:
        raise ValueError(f"a strategy spec is {{'name': str, 'kwargs': dict}} "
                         f"(TemperatureStrategy.spec()); got {spec!r:.200}")
    return build_strategy(spec["name"], **spec["kwargs"])
