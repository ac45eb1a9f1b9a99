"""reward.synthetic: exact arith and countdown verifiers, including hostile answers."""

import time
from fractions import Fraction

import pytest

from reward.synthetic import (
    MAX_EXPR_CHARS,
    arith_reward,
    countdown_eval,
    countdown_reward,
    parse_int_answer,
)

# ----------------------------------------------------------------------------- arith


@pytest.mark.parametrize(
    "content, value",
    [
        ("42", 42),
        (" -7 ", -7),
        ("+5", 5),
        ("\u22123", -3),  # unicode minus
        ("12.0", 12),  # a zero fraction is the same integer
        ("12.000", 12),
        ("1,234", 1234),
        ("1{,}234", 1234),
        (r"1\,234", 1234),  # LaTeX thin space
        ("$8$", 8),
        ("007", 7),
        ("12.5", None),
        ("1e3", None),
        ("0x1F", None),
        ("12/1", None),
        ("1,23", None),  # not a thousands grouping
        ("forty-two", None),
        ("", None),
        ("--5", None),
        ("9" * 5000, None),  # too many digits: rejected without int() (4300-digit limit)
    ],
)
def test_parse_int_answer(content, value):
    assert parse_int_answer(content) == value


def test_arith_reward():
    assert arith_reward(r"3*14 = \boxed{42}", "42") == 1.0
    assert arith_reward(r"\boxed{41}", "42") == 0.0
    assert arith_reward(r"\boxed{-42}", "42") == 0.0
    assert arith_reward(r"\boxed{42} no wait \boxed{43}", "43") == 1.0  # last box wins
    assert arith_reward("42", "42") == 0.0  # no box
    assert arith_reward("", "42") == 0.0
    assert arith_reward(b"\xff\\boxed{ 42 }\xfe", "42") == 1.0  # invalid UTF-8 bytes


def test_arith_bad_gold_is_a_data_error():
    with pytest.raises(ValueError, match=r"'4\.5'.*integer"):
        arith_reward(r"\boxed{4}", "4.5")


# ----------------------------------------------------------------------------- countdown
META = {"numbers": [1, 3, 4, 6], "target": 24}


@pytest.mark.parametrize(
    "expr",
    [
        "6/(1-3/4)",  # exact fractions: 1 - 3/4 = 1/4, 6 / (1/4) = 24
        r"\frac{6}{1-\frac{3}{4}}",
        r"\dfrac{6}{1 - \tfrac{3}{4}}",
        r"6 \div (1 - 3 \div 4)",
        "6÷(1−3÷4)",
        r"\left( 6 \right) / \left( 1 - 3/4 \right)",
        "[6/(1-3/4)]",
        "6/(1-3/4) = 24",
        "$6/(1-3/4)$",
    ],
)
def test_countdown_accepts_exact_solutions_in_many_notations(expr):
    assert countdown_eval(expr, META["numbers"]) == Fraction(24)
    assert countdown_reward(rf"\boxed{{{expr}}}", META) == 1.0


@pytest.mark.parametrize(
    "expr, numbers, value",
    [
        (r"(2 + 3) \times 4", [2, 3, 4], 20),
        (r"2 \cdot 3 × 4 · 5", [2, 3, 4, 5], 120),  # \cdot, ×, · all multiply
        ("8 - 2 - 1", [8, 2, 1], 5),  # left associative: (8 - 2) - 1
        ("8 / 4 / 2", [8, 4, 2], 1),
        ("2 + 3 * 4", [2, 3, 4], 14),  # precedence
        ("1 / 3", [1, 3], Fraction(1, 3)),
    ],
)
def test_countdown_value(expr, numbers, value):
    assert countdown_eval(expr, numbers) == value


@pytest.mark.parametrize(
    "expr",
    [
        "6*4",  # numbers missing
        "6*4*1*3*1",  # 1 reused (extra literal)
        "6*4*(3-3)+24",  # wrong multiset
        "6*4*1*2",  # a number not given
        "6/(1-3/4)+0",  # an extra literal
        "6*4*1*3",  # right numbers, wrong value (72)
        "6/(1-3/4) = 25",  # claimed value is wrong
        "6/(1-3/4) = 24 = 24",
        "-6/(1-3/4)",  # unary minus is not allowed
        "6(1-3/4)",  # no implicit multiplication
        "6/(1-3/4",  # unbalanced
        "6/(1-3/4]",  # mismatched brackets
        "6/(1-3/4)**1",
        "6.0/(1-3/4)",  # no decimals
        "",
    ],
)
def test_countdown_rejects(expr):
    assert countdown_eval(expr, META["numbers"]) != 24
    assert countdown_reward(rf"\boxed{{{expr}}}", META) == 0.0


def test_countdown_division_by_zero_is_zero_reward():
    meta = {"numbers": [4, 4, 1], "target": 1}
    assert countdown_eval("1/(4-4)", meta["numbers"]) is None
    assert countdown_reward(r"\boxed{1/(4-4)}", meta) == 0.0
    assert countdown_reward(r"\boxed{\frac{1}{4-4}}", meta) == 0.0


@pytest.mark.parametrize(
    "hostile",
    [
        "__import__('os').system('echo pwned')",
        "open('/etc/passwd').read()",
        "(lambda: 24)()",
        "24 if True else 0",
        "[x for x in (1,3,4,6)]",
        "6/(1-3/4) # comment",
        "9**9**9**9",
        "6/(1-3/4); import os",
    ],
)
def test_countdown_code_like_strings_score_zero(hostile, monkeypatch):
    # Make any attempt to evaluate code fail loudly: the verifier must not need eval/exec.
    import builtins

    def forbidden(*args, **kwargs):
        raise AssertionError("model text was evaluated as code")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "__import__", forbidden)  # also catches ast.literal_eval imports
    assert countdown_reward(rf"\boxed{{{hostile}}}", META) == 0.0


def test_countdown_hostile_sizes_are_rejected_fast():
    t0 = time.perf_counter()
    deep = "(" * 5000 + "6/(1-3/4)" + ")" * 5000  # nesting far past MAX_DEPTH
    assert countdown_eval(deep, META["numbers"]) is None
    too_long = "6/(1-3/4)" + " " * MAX_EXPR_CHARS
    assert countdown_eval(too_long, META["numbers"]) is None
    big_literal = "1" * 5000 + "*6/(1-3/4)"  # a literal past MAX_LITERAL_DIGITS
    assert countdown_eval(big_literal, [int("1" * 4000)]) is None
    many = "+".join(["1"] * 400)  # more literals than numbers: stopped in the tokenizer
    assert countdown_eval(many, [1, 1]) is None
    assert time.perf_counter() - t0 < 0.5


def test_countdown_no_box_and_bad_meta():
    assert countdown_reward("6/(1-3/4) = 24", META) == 0.0
    with pytest.raises(ValueError, match="numbers"):
        countdown_reward(r"\boxed{1}", {"numbers": "1 3 4 6", "target": 24})
    with pytest.raises(ValueError, match="target"):
        countdown_reward(r"\boxed{1}", None)
