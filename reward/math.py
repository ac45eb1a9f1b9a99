"""Maths answer checking with math-verify: does the last ``\\boxed{}`` of a response equal the gold?

This is the only module in ``reward/`` that imports math-verify / sympy (slow to import, about a
second); ``reward.score`` imports it on the first ``math`` item.

Rules:

* Gold: a full solution with a ``\\boxed{}`` (MATH ``solution`` field), whose last box is used,
  or a plain answer string (MATH ``answer``, or a GSM8K answer after the loader has cut at
  ``####``). It is parsed as ``\\boxed{gold}``, so ``3/4``, ``\\frac{3}{4}``, ``0.5``, ``\\$42``,
  ``1,000``, ``x=3`` and intervals all parse. A gold that math-verify cannot parse is a data
  bug and raises ``ValueError``. Parsed golds are cached (``GOLD_CACHE_SIZE``): a group of G
  responses shares one gold.
* Prediction: the content of the last ``\\boxed{}`` of the response (``reward.extract``), parsed
  as ``\\boxed{content}`` with math-verify's LaTeX and plain-expression extractors. We do not let
  math-verify search the whole response: its regexes are slow on long text, and the project's
  answer format is ``\\boxed{}``. No box, a blank box, content longer than
  ``MAX_ANSWER_CHARS`` or brackets nested deeper than ``MAX_ANSWER_DEPTH`` give 0 without
  parsing: math-verify's LaTeX parser slows down exponentially with nesting (12 levels of
  ``{}`` take about 3 s, 14 hit the 5 s alarm), while real answers nest a few levels.
* Comparison: ``math_verify.verify(gold, pred)`` (numeric to 6 decimals, then symbolic), so
  ``\\frac{1}{2}`` == ``0.5`` and ``\\dfrac{3}{4}`` == ``3/4``. Returns 1.0 or 0.0.

Time limits: math-verify guards ``parse`` and ``verify`` with ``signal.alarm`` (``timeout_s``
whole seconds, each call separately). That works only in the main thread, and a signal
handler runs only between Python bytecodes, so it cannot stop C-level work such as the
big-int power inside ``9**(9**9)``. Off the main thread we pass ``None`` (no alarm) rather than
let math-verify raise. The hard limit is ``reward.pool.RewardPool``, which kills the worker
process; math-verify's alarm is only a cheaper first line that avoids a process restart.
"""

from __future__ import annotations

import functools
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from reward.extract import last_boxed

MAX_ANSWER_CHARS = 1000
"""a boxed answer longer than this is wrong without being parsed (real answers are short)"""
MAX_ANSWER_DEPTH = 10
"""a boxed answer with brackets ({[( ) ]}) nested deeper than this is wrong without being parsed"""
GOLD_CACHE_SIZE = 4096
"""how many parsed gold answers are kept per process"""
DEFAULT_TIMEOUT_S = 5
"""math-verify's own alarm for each parse / verify call, in whole seconds"""

_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())


def _bracket_depth(text: str) -> int:
    """Deepest nesting of ( [ { in ``text`` (closers only need to be brackets, not to match)."""
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}" and depth > 0:
            depth -= 1
    return deepest


def _alarm_seconds(timeout_s: float | None) -> int | None:
    """math-verify's timeout argument: whole seconds, or None off the main thread."""
    if timeout_s is None or threading.current_thread() is not threading.main_thread():
        return None
    return max(1, int(round(timeout_s)))


def _parse_boxed(content: str, timeout_s: float | None) -> list:
    return parse(
        "\\boxed{" + content + "}",
        extraction_config=_EXTRACTION,
        parsing_timeout=_alarm_seconds(timeout_s),
    )


@functools.lru_cache(maxsize=GOLD_CACHE_SIZE)
def parse_gold(gold: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> tuple:
    """math-verify's parse of a gold answer or solution (module doc); ValueError if none."""
    content = last_boxed(gold) if "\\boxed" in gold else gold
    parsed = _parse_boxed(content.strip(), timeout_s) if content and content.strip() else []
    if not parsed:
        raise ValueError(
            f"math gold {gold[:80]!r} could not be parsed by math-verify; a gold must be an "
            "answer such as '3/4' or '\\frac{3}{4}', or a solution ending in \\boxed{answer} "
            "(fix the data row)"
        )
    return tuple(parsed)


def math_reward(
    response: str | bytes, gold: str, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> float:
    """1.0 iff the last ``\\boxed{}`` of ``response`` equals ``gold`` by math-verify, else 0.0.

    ``timeout_s`` is math-verify's own alarm (module doc), not a hard limit."""
    gold_parsed = parse_gold(gold, timeout_s)
    content = last_boxed(response)
    if content is None or not content.strip() or len(content) > MAX_ANSWER_CHARS:
        return 0.0
    if _bracket_depth(content) > MAX_ANSWER_DEPTH:
        return 0.0
    pred = _parse_boxed(content, timeout_s)
    if not pred:
        return 0.0
    return float(verify(list(gold_parsed), pred, timeout_seconds=_alarm_seconds(timeout_s)))
