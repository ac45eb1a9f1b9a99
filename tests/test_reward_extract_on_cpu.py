"""reward.extract: the last \\boxed{} of a response, on normal and hostile text."""

import random
import time

import pytest

from reward import extract
from reward.extract import has_boxed, last_boxed
from reward.score import score


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{1} then \boxed{2} finally \boxed{3}", "3"),  # last wins
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are literal
        (r"\boxed {7}", "7"),  # space before the brace
        (r"\boxed 5$ done", "5"),  # TeX argument without braces
        (r"\boxed{\boxed{1}}", "1"),  # nested box: the inner one opens last
        (r"\boxed{1} and then \boxed{2", "1"),  # cut off: the complete one is used
        (r"}}} \boxed{3} }}", "3"),  # stray closing braces are ignored
        (r"\boxed{}", ""),
        ("\\\\boxed{\\\\frac{1}{2}}", "\\\\frac{1}{2}"),  # JSON-escaped \\boxed still counts
        (r"\boxed{a \\ b}", r"a \\ b"),  # a LaTeX line break inside
        (r"\boxedx{3}", None),  # another command, not \boxed
        (r"\boxed{ {3 }", None),  # unbalanced: never closes
        ("no box here", None),
        ("", None),
    ],
)
def test_last_boxed_cases(text, expected):
    assert last_boxed(text) == expected


def test_has_boxed_needs_non_blank_content():
    assert has_boxed(r"\boxed{x}")
    assert not has_boxed(r"\boxed{  }")
    assert not has_boxed("plain 42")


def test_deep_nesting_10k_levels_is_fast_and_correct():
    inner = "{" * 10_000 + "x" + "}" * 10_000
    t0 = time.perf_counter()
    assert last_boxed("\\boxed{" + inner + "}") == inner  # the content is matched exactly
    # 10k unclosed \boxed{ openers: no complete box.
    assert last_boxed("\\boxed{" * 10_000) is None
    assert time.perf_counter() - t0 < 1.0


def test_huge_input_is_fast():
    answer = "x" * 1_000_000 + r" \boxed{42}"  # 1 MB
    t0 = time.perf_counter()
    assert last_boxed(answer) == "42"
    assert last_boxed(r"\boxed{42}" + "{x} " * 250_000) == "42"  # a 1 MB tail full of braces
    assert last_boxed(r"\boxed{42} " + "{x} " * 250_000 + r"\boxed{4") == "42"  # cut off
    assert time.perf_counter() - t0 < 1.0


def test_a_correct_box_followed_by_a_long_tail_still_scores():
    """The whole response is read: 20,000 characters after the answer (the old scan window was
    the last 10,000) do not hide it."""
    tail = (" and so on, {x} $y$ \\\\ more" * 750)[:20_000]  # braces, $ and \\
    assert len(tail) == 20_000
    text = r"so 3 + 4 = \boxed{7}" + tail
    assert last_boxed(text) == "7" and has_boxed(text)
    assert score("arith", text, "7") == 1.0 and score("arith", text, "8") == 0.0
    assert last_boxed(text.encode()) == "7"
    assert score("arith", text + r" \boxed{8", "7") == 1.0  # a cut-off box after the tail


def test_starting_at_the_last_box_equals_one_pass_from_the_start():
    """The reverse-search shortcut gives what a full left-to-right pass gives, on random text."""
    pieces = [r"\boxed", r"\boxed{", r"\\boxed{", r"\boxedx{", "{", "}", "\\", r"\{", r"\}",
              "\\\\", " ", "$", "5", "ab"]
    rng = random.Random(0)
    for _ in range(3_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert last_boxed(text) == extract._scan(text, 0, first_only=False), text


def test_invalid_utf8_bytes_are_replaced_not_raised():
    raw = b"\xff\xfe garbage \xc3\x28 \\boxed{7} \x80"
    assert last_boxed(raw) == "7"
    assert last_boxed(b"\\boxed{\xff}") == "\ufffd"
    assert last_boxed(bytearray(b"\\boxed{8}")) == "8"


def test_wrong_type_names_the_type():
    with pytest.raises(TypeError, match="int"):
        last_boxed(42)
