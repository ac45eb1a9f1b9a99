"""reward.extract: the last \\boxed{} of a response, on normal and hostile text."""

import time

import pytest

from reward.extract import MAX_SCAN_CHARS, has_boxed, last_boxed


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
    # 10k levels do not fit the scan window: the \boxed{ opener is outside it -> None, quickly.
    deep = "\\boxed{" + "{" * 10_000 + "x" + "}" * 10_000 + "}"
    t0 = time.perf_counter()
    assert last_boxed(deep) is None
    # 4k levels fit (8k braces < MAX_SCAN_CHARS): the content is matched exactly.
    inner = "{" * 4_000 + "x" + "}" * 4_000
    assert last_boxed("\\boxed{" + inner + "}") == inner
    # 10k unclosed \boxed{ openers: no complete box.
    assert last_boxed("\\boxed{" * 10_000) is None
    assert time.perf_counter() - t0 < 1.0


def test_huge_input_only_tail_is_scanned():
    answer = "x" * 1_000_000 + r" \boxed{42}"  # 1 MB
    t0 = time.perf_counter()
    assert last_boxed(answer) == "42"
    assert time.perf_counter() - t0 < 0.5
    # A box that ends before the scan window is not seen.
    assert last_boxed(r"\boxed{1}" + " " * MAX_SCAN_CHARS) is None


def test_invalid_utf8_bytes_are_replaced_not_raised():
    raw = b"\xff\xfe garbage \xc3\x28 \\boxed{7} \x80"
    assert last_boxed(raw) == "7"
    assert last_boxed(b"\\boxed{\xff}") == "\ufffd"
    assert last_boxed(bytearray(b"\\boxed{8}")) == "8"


def test_wrong_type_names_the_type():
    with pytest.raises(TypeError, match="int"):
        last_boxed(42)
