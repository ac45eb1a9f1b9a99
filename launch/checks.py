"""The configuration error and its check, for every layer's config schema; imports nothing.

``launch.config`` validates the whole run; the schemas of the groups a package reads live next
to that package (``rollout/config.py``, ``learner/config.py``) and check their values with
``require``, so those packages never import ``launch.config``.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value breaks a rule; the message names key, value, rule and fix."""


def require(ok: bool, key: str, value: Any, rule: str, fix: str) -> None:
    """Raise ``ConfigError("KEY (VALUE) RULE; FIX")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} ({value!r}) {rule}; {fix}")
