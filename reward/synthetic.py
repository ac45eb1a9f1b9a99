"""Exact verifiers for the synthetic tasks ``arith`` and ``countdown`` (no sympy, microseconds).

The answer is always the content of the last ``\\boxed{}`` (see ``reward.extract``); both
functions return 1.0 or 0.0.

``arith`` (gold: an integer string such as ``"-42"``): the boxed content, after removing
whitespace, ``$`` and LaTeX spacing (``\\,`` ``\\!`` ``\\;`` ``\\ ``), must be an integer equal to
the gold: an optional ``+``/``-`` (U+2212 minus too), digits, optionally grouped by thousands
(``1,234`` or ``1{,}234``), optionally followed by a zero fraction (``12.0``, ``12.000``) since that
is the same integer. ``12.5``, ``1e3``, ``0x1F``, ``12/1`` and words are wrong. More than
``MAX_INT_DIGITS`` digits is wrong without conversion (Python's int/str limit is 4300 digits).

``countdown`` (meta: ``{"numbers": [ints], "target": int}``): the boxed content must be an
arithmetic expression that uses every given number exactly once (the multiset of integer
literals equals ``numbers``) and evaluates exactly (``fractions.Fraction``) to ``target``.
Accepted notation: ``+ -`` (and U+2212), ``* \\times \\cdot × ·``, ``/ \\div ÷``,
``\\frac{a}{b}`` (``\\dfrac``, ``\\tfrac``), parentheses ``( ) [ ] { }`` with optional
``\\left``/``\\right``, and one optional trailing ``= <target>``. Operators are binary only (no
unary minus: the task combines the given numbers), no implicit multiplication, no decimals.
Division by zero gives 0.

Nothing from the model is ever evaluated as code: a tokenizer plus a recursive-descent parser
reads the expression, and hostile input is rejected early by limits on its length
(``MAX_EXPR_CHARS``), nesting depth (``MAX_DEPTH``) and literal size (``MAX_LITERAL_DIGITS``);
any token outside the grammar (letters, ``__import__``, ``**``) rejects the answer.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

from reward.extract import last_boxed

MAX_INT_DIGITS = 1000
"""arith: an answer with more digits than this is wrong (no int conversion is attempted)"""
MAX_EXPR_CHARS = 1000
"""countdown: a boxed expression longer than this is wrong (real ones are < 100 chars)"""
MAX_DEPTH = 32
"""countdown: maximum nesting of parentheses / \\frac"""
MAX_LITERAL_DIGITS = 12
"""countdown: an integer literal with more digits than this is wrong"""

# LaTeX spacing and math-mode delimiters that carry no meaning in an answer.
_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|\$|\s")
_ARITH_INT = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.0*)?")


def _clean(content: str) -> str:
    return _SPACING.sub("", content).replace("\u2212", "-").replace("{,}", ",")


def parse_int_answer(content: str) -> int | None:
    """The integer written in ``content`` (``arith`` rules, module doc), or None."""
    s = _clean(content)
    m = _ARITH_INT.fullmatch(s)
    if m is None:
        return None
    digits = m.group(2).replace(",", "")
    if len(digits) > MAX_INT_DIGITS:
        return None
    value = int(digits)
    return -value if m.group(1) == "-" else value


def arith_reward(response: str | bytes, gold: str) -> float:
    """1.0 iff the last ``\\boxed{}`` holds the integer ``gold`` (module doc), else 0.0."""
    gold_value = parse_int_answer(gold)
    if gold_value is None:
        raise ValueError(
            f"arith gold {gold[:80]!r} is not an integer string; the arith task needs gold "
            "answers such as '42' or '-7' (fix the data row)"
        )
    content = last_boxed(response)
    if content is None:
        return 0.0
    return float(parse_int_answer(content) == gold_value)


# ----------------------------------------------------------------------------- countdown
# Tokens: integer literals, the four operators, open/close brackets, \frac, '='.
_CD_TOKEN = re.compile(
    r"\s+|\\left|\\right|\\[,;:! ]|\\quad|\\qquad|\$"  # ignored
    r"|(?P<num>\d+)"
    r"|(?P<op>[+\-*/=\u2212\u00d7\u00b7\u00f7]|\\times|\\cdot|\\div)"
    r"|(?P<open>[(\[{])|(?P<close>[)\]}])"
    r"|(?P<frac>\\[dt]?frac)"
)
_OP_ALIASES = {"\u2212": "-", "\u00d7": "*", "\u00b7": "*", "\\times": "*", "\\cdot": "*",
               "\u00f7": "/", "\\div": "/"}
_CLOSING = {"(": ")", "[": "]", "{": "}"}


class _Reject(Exception):
    """The expression is not a valid countdown answer (reward 0)."""


def _tokenize(expr: str, max_literals: int) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    literals = 0
    pos = 0
    while pos < len(expr):
        m = _CD_TOKEN.match(expr, pos)
        if m is None:
            raise _Reject(f"unexpected character {expr[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind is None:
            continue  # whitespace, spacing commands, \left, \right
        text = m.group(kind)
        if kind == "num":
            literals += 1
            if len(text) > MAX_LITERAL_DIGITS or literals > max_literals:
                raise _Reject("literal too long or too many literals")
        elif kind == "op":
            text = _OP_ALIASES.get(text, text)
        tokens.append((kind, text))
    return tokens


class _Parser:
    """Recursive descent over: expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
    factor := INT | open expr close | \\frac{expr}{expr}. Collects the integer literals."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.literals: list[int] = []

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, text: str | None = None) -> str:
        tok = self.peek()
        if tok is None or tok[0] != kind or (text is not None and tok[1] != text):
            raise _Reject(f"expected {text or kind} at token {self.pos}")
        self.pos += 1
        return tok[1]

    def expr(self) -> Fraction:
        value = self.term()
        while (tok := self.peek()) is not None and tok in (("op", "+"), ("op", "-")):
            self.pos += 1
            rhs = self.term()
            value = value + rhs if tok[1] == "+" else value - rhs
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while (tok := self.peek()) is not None and tok in (("op", "*"), ("op", "/")):
            self.pos += 1
            rhs = self.factor()
            if tok[1] == "*":
                value = value * rhs
            elif rhs == 0:
                raise _Reject("division by zero")
            else:
                value = value / rhs
        return value

    def factor(self) -> Fraction:
        tok = self.peek()
        if tok is None:
            raise _Reject("expression ends early")
        kind, text = tok
        if kind == "num":
            self.pos += 1
            self.literals.append(int(text))
            return Fraction(int(text))
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Reject("nested too deeply")
        if kind == "open":
            self.pos += 1
            value = self.expr()
            self.take("close", _CLOSING[text])
        elif kind == "frac":  # \frac{num}{den}
            self.pos += 1
            self.take("open", "{")
            num = self.expr()
            self.take("close", "}")
            self.take("open", "{")
            den = self.expr()
            self.take("close", "}")
            if den == 0:
                raise _Reject("division by zero")
            value = num / den
        else:
            raise _Reject(f"unexpected {text!r}")
        self.depth -= 1
        return value


def _check_countdown_meta(meta: dict | None) -> tuple[list[int], int]:
    numbers = (meta or {}).get("numbers")
    target = (meta or {}).get("target")
    ok_numbers = isinstance(numbers, (list, tuple)) and all(
        isinstance(n, int) and not isinstance(n, bool) for n in numbers
    )
    if not ok_numbers or not isinstance(target, int) or isinstance(target, bool):
        raise ValueError(
            f"countdown meta {meta!r} must hold 'numbers' (a list of ints) and 'target' (an int); "
            "fix the data row, e.g. {'numbers': [1, 3, 4, 6], 'target': 24}"
        )
    return list(numbers), target


def countdown_eval(expr: str, numbers: list[int]) -> Fraction | None:
    """Exact value of ``expr`` if it is a valid expression using each of ``numbers`` exactly
    once (module doc), else None. Never evaluates ``expr`` as code."""
    if len(expr) > MAX_EXPR_CHARS:
        return None
    try:
        tokens = _tokenize(expr, max_literals=len(numbers) + 1)  # +1: the '= target' literal
        if tokens.count(("op", "=")) == 1 and len(tokens) >= 2 and tokens[-2] == ("op", "="):
            rhs, tokens = tokens[-1], tokens[:-2]  # 'expr = 24': the value is checked below
        else:
            rhs = None
        parser = _Parser(tokens)
        value = parser.expr()
        if parser.pos != len(tokens):
            return None  # trailing tokens, e.g. '2 3', '1+2)'
    except _Reject:
        return None
    if Counter(parser.literals) != Counter(numbers):
        return None
    if rhs is not None and (rhs[0] != "num" or Fraction(int(rhs[1])) != value):
        return None
    return value


def countdown_reward(response: str | bytes, meta: dict | None) -> float:
    """1.0 iff the last ``\\boxed{}`` holds an expression over ``meta['numbers']`` (each used
    exactly once) equal to ``meta['target']`` (module doc), else 0.0."""
    numbers, target = _check_countdown_meta(meta)
    content = last_boxed(response)
    if content is None:
        return 0.0
    value = countdown_eval(content, numbers)
    return float(value is not None and value == target)
