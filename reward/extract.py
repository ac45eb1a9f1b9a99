"""Find the final answer in a model response: the content of the last ``\\boxed{...}``.

Every verifier in ``reward/`` reads its answer through :func:`last_boxed`, so the rule is
stated once:

* The whole response is read, whatever its length: a correct answer followed by a long tail
  (a model that kept talking) still counts. One reverse search (``str.rfind``, in C) finds the
  last ``\\boxed``; the pass below starts there and stops as soon as that box closes, so the
  text before it is never tokenised and the tail only up to the closing brace. Only when that
  last box never closes (a response cut off by the token limit) does one pass run from the first
  ``\\boxed`` to the end. Linear time either way.
* Braces are matched with an explicit stack in one left-to-right pass (no recursion, so 10k
  nesting levels are fine). Starting at a ``\\boxed`` gives the same matches as starting at the
  beginning for every brace opened after it (braces closing earlier ones are stray there).
  ``\\{``, ``\\}`` are literal braces (set notation) and do not count; ``\\\\`` is a LaTeX line
  break. ``\\\\boxed`` (doubled backslashes, as in JSON-escaped text that a model copied) still
  counts as ``\\boxed``.
* "Last" means the ``\\boxed`` that opens last among those whose brace closes; an unclosed
  ``\\boxed{`` (a response cut off by the token limit) is skipped, and an earlier complete one
  is used. For nested ``\\boxed{\\boxed{1}}`` that is the inner one, ``1``. Stray closing braces
  are ignored.
* ``\\boxed 5`` (no braces, as TeX allows) yields ``5``: the run of characters up to the next
  whitespace or ``$``.
* Bytes are decoded as UTF-8 with ``errors="replace"``, so invalid bytes become U+FFFD rather
  than an exception.

The content is returned verbatim (not stripped); ``None`` means no complete ``\\boxed``.
"""

from __future__ import annotations

import re

# One token per match: the \boxed command (with the whitespace and the optional brace that
# follow it), a LaTeX line break, an escaped brace, or a bare brace. Everything else is skipped
# by the regex engine in C, so the Python loop runs once per brace, not once per character.
_TOKEN = re.compile(r"(?P<box>\\+boxed(?![A-Za-z])\s*(?P<brace>\{)?)|\\\\|\\[{}]|[{}]")
_UNBRACED_ARG = re.compile(r"[^\s${}]+")


def _decoded(text: str | bytes) -> str:
    """``text`` as str, decoded if it is bytes."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(
            f"last_boxed expects str or bytes, got {type(text).__name__}; "
            "pass the decoded response text"
        )
    return text


def _scan(text: str, pos: int, first_only: bool) -> str | None:
    """The stack pass from ``pos``: the content of the complete box that opens last (the first
    one completed with ``first_only``, for a scan that starts at the last ``\\boxed``)."""
    stack: list[int] = []  # for each open brace: start of its \boxed content, or -1 for a plain {
    best_start = -1
    best: str | None = None
    for m in _TOKEN.finditer(text, pos):
        tok = m.group(0)
        if tok == "{":
            stack.append(-1)
        elif tok == "}":
            if stack:
                start = stack.pop()
                if start >= 0 and start > best_start:
                    best_start, best = start, text[start : m.start()]
        elif m.group("box") is not None:
            if m.group("brace") is not None:  # \boxed{ : content starts after the brace
                stack.append(m.end())
            else:  # \boxed 5 : one unbraced argument
                arg = _UNBRACED_ARG.match(text, m.end())
                if arg is not None and arg.start() > best_start:
                    best_start, best = arg.start(), arg.group(0)
        # \\ and \{ \} are consumed so that they never count as braces.
        if first_only and best is not None:
            return best
    return best


def last_boxed(text: str | bytes) -> str | None:
    """Content of the last complete ``\\boxed{...}`` in ``text``, or None (see module doc)."""
    text = _decoded(text)
    last = text.rfind("\\boxed")
    if last < 0:
        return None
    found = _scan(text, last, first_only=True)  # no \boxed opens after it: the first is the last
    if found is not None:
        return found
    first = text.find("\\boxed")  # the last box never closes: an earlier complete one counts
    return _scan(text, first, first_only=False) if first < last else None


def has_boxed(text: str | bytes) -> bool:
    """True iff the response has a complete ``\\boxed`` whose content is not blank."""
    content = last_boxed(text)
    return content is not None and content.strip() != ""
