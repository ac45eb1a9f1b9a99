"""Find the final answer in a model response: the content of the last ``\\boxed{...}``.

Every verifier in ``reward/`` reads its answer through :func:`last_boxed`, so the rule is
stated once:

* Only the last ``MAX_SCAN_CHARS`` characters of the response are examined. Final answers sit
  at the end of a response; the cap keeps the cost of a 1 MB response the same as that of a
  10 kB one. A ``\\boxed{`` that opens before the window is not seen.
* Braces are matched with an explicit stack in one left-to-right pass over the window (linear
  time, no recursion, so 10k nesting levels are fine). ``\\{``, ``\\}`` are literal braces (set
  notation) and do not count; ``\\\\`` is a LaTeX line break. ``\\\\boxed`` (doubled
  backslashes, as in JSON-escaped text that a model copied) still counts as ``\\boxed``.
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

MAX_SCAN_CHARS = 10_000
"""how many characters at the end of a response are searched for the final \\boxed{}"""

# One token per match: the \boxed command (with the whitespace and the optional brace that
# follow it), a LaTeX line break, an escaped brace, or a bare brace. Everything else is skipped
# by the regex engine in C, so the Python loop runs once per brace, not once per character.
_TOKEN = re.compile(r"(?P<box>\\+boxed(?![A-Za-z])\s*(?P<brace>\{)?)|\\\\|\\[{}]|[{}]")
_UNBRACED_ARG = re.compile(r"[^\s${}]+")


def _window(text: str | bytes) -> str:
    """The last MAX_SCAN_CHARS characters of ``text``, decoded if it is bytes."""
    if isinstance(text, (bytes, bytearray)):
        # A UTF-8 character is at most 4 bytes: slice first so a 1 GB input costs nothing.
        text = bytes(text[-4 * MAX_SCAN_CHARS :]).decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        raise TypeError(
            f"last_boxed expects str or bytes, got {type(text).__name__}; "
            "pass the decoded response text"
        )
    return text[-MAX_SCAN_CHARS:]


def last_boxed(text: str | bytes) -> str | None:
    """Content of the last complete ``\\boxed{...}`` in ``text``, or None (see module doc)."""
    window = _window(text)
    if "\\boxed" not in window:
        return None
    stack: list[int] = []  # for each open brace: start of its \boxed content, or -1 for a plain {
    best_start = -1
    best: str | None = None
    for m in _TOKEN.finditer(window):
        tok = m.group(0)
        if tok == "{":
            stack.append(-1)
        elif tok == "}":
            if stack:
                start = stack.pop()
                if start >= 0 and start > best_start:
                    best_start, best = start, window[start : m.start()]
        elif m.group("box") is not None:
            if m.group("brace") is not None:  # \boxed{ : content starts after the brace
                stack.append(m.end())
            else:  # \boxed 5 : one unbraced argument
                arg = _UNBRACED_ARG.match(window, m.end())
                if arg is not None and arg.start() > best_start:
                    best_start, best = arg.start(), arg.group(0)
        # \\ and \{ \} are consumed so that they never count as braces.
    return best


def has_boxed(text: str | bytes) -> bool:
    """True iff the response has a complete ``\\boxed`` whose content is not blank."""
    content = last_boxed(text)
    return content is not None and content.strip() != ""
