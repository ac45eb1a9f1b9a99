"""Synthetic verifiable maths tasks: the embedded default's training and held-out data.

Two families, five difficulty levels each, deterministic by seed:

- ``arith``: multi-step integer arithmetic, e.g. ``Compute (3+4)*2-5.``; the worked solution
  evaluates one operation per step (``3+4=7. 7*2=14. 14-5=9.``) and ends in ``\\boxed{9}``.
  Level L = number of operations; operand and intermediate ranges grow with L.
- ``countdown``: reach a target from given numbers with + - * /, each number used exactly once,
  e.g. ``Use 3 5 2 to make 16.``; any correct expression is accepted (checked exactly by
  ``reward.synthetic``). Level sets how many numbers and how large. Many expressions are tried
  before one hits the target, so sampling temperature (exploration) matters here.

Three splits, disjoint by construction: a hash of the prompt picks its bucket, whatever the seed
that generated it. Bucket 0 (1 in ``BUCKETS``) is the held-out test split ('eval'), bucket 1 the
validation split ('val': where ``launch.compare`` tunes each arm's decoding temperature, never on
the test problems), the rest is 'train'.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

LEVELS = (1, 2, 3, 4, 5)
FAMILIES = ("arith", "countdown")
BUCKETS = 10  # a prompt's split: hash % BUCKETS == 0 -> 'eval', == 1 -> 'val', else 'train'
SPLITS = ("train", "val", "eval")


@dataclass(frozen=True)
class Problem:
    """One verifiable problem. ``task`` names its verifier in ``reward.score``."""

    id: str
    task: str
    prompt: str  # the question, without any chat template
    answer: str  # gold answer (for countdown: the target; any correct expression scores)
    solution: str  # a worked solution ending in \boxed{...}, used for supervised pre-training
    level: int
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- expressions
# An expression is built bottom-up as a list of steps (a, op, b, result); build order is the
# evaluation order of the worked solution, and the printer adds only the parentheses needed.

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass
class _Expr:
    text: str
    value: int
    prec: int  # 3 for an atom


def _combine(left: _Expr, op: str, right: _Expr) -> _Expr:
    p = _PREC[op]
    lt = f"({left.text})" if left.prec < p else left.text
    # right operand needs parentheses if lower precedence, or equal precedence under - or /
    needs = right.prec < p or (right.prec == p and op in "-/")
    rt = f"({right.text})" if needs else right.text
    value = _apply(left.value, op, right.value)
    return _Expr(f"{lt}{op}{rt}", value, p)


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b  # callers only divide exactly


def _step_text(a: int, op: str, b: int, c: int) -> str:
    return f"{a}{op}{b}={c}."


# ----------------------------------------------------------------------------- arithmetic

# level -> (operand max, intermediate |value| max, allow two-digit multiplier)
_ARITH_LEVELS = {
    1: (20, 40, False),
    2: (9, 60, False),
    3: (15, 150, False),
    4: (20, 300, False),
    5: (30, 600, True),
}


def _arith(rng: random.Random, level: int) -> tuple[str, str, str, dict] | None:
    hi, vmax, big_mul = _ARITH_LEVELS[level]
    expr = _Expr(str(n := rng.randint(1, hi)), n, 3)
    steps = []
    for _ in range(level):
        op = rng.choice("+-*")
        n = rng.randint(2 if op == "*" else 1, hi if (op != "*" or big_mul) else 9)
        atom = _Expr(str(n), n, 3)
        if rng.random() < 0.5:
            left, right = expr, atom
        else:
            left, right = atom, expr
        new = _combine(left, op, right)
        if abs(new.value) > vmax:
            return None
        steps.append(_step_text(left.value, op, right.value, new.value))
        expr = new
    prompt = f"Compute {expr.text}."
    solution = " ".join(steps) + f" \\boxed{{{expr.value}}}"
    return prompt, str(expr.value), solution, {}


def left_to_right_solution(expression: str) -> str:
    """A careless worked solution of ``expression`` (+ - * and parentheses): every operator in
    reading order, precedence ignored (parentheses still first), e.g. ``3+4*2`` -> ``3+4=7.
    7*2=14. \\boxed{14}``. A pre-training option mixes such solutions in
    (``TinyModelSpec.sft_left_to_right``, 0 by default): a verifiable flaw that RL can correct
    only by sampling the precedence-respecting first step the model rarely takes."""
    tokens = re.findall(r"\d+|[-+*()]", expression)
    steps: list[str] = []

    def group(i: int) -> tuple[int, int]:  # value of the sequence starting at i, index after
        value, i = atom(i)
        while i < len(tokens) and tokens[i] != ")":
            op = tokens[i]
            right, i = atom(i + 1)
            new = _apply(value, op, right)
            steps.append(_step_text(value, op, right, new))
            value = new
        return value, i

    def atom(i: int) -> tuple[int, int]:
        if tokens[i] == "(":
            value, i = group(i + 1)
            return value, i + 1  # past ")"
        return int(tokens[i]), i + 1

    value, end = group(0)
    if end != len(tokens):
        raise ValueError(f"unbalanced expression {expression!r}")
    return " ".join(steps) + f" \\boxed{{{value}}}"


# ----------------------------------------------------------------------------- countdown

# level -> (how many numbers, largest number, largest target)
_COUNTDOWN_LEVELS = {1: (2, 20, 99), 2: (3, 9, 99), 3: (3, 20, 200), 4: (4, 9, 200),
                     5: (4, 25, 500)}


def _countdown(rng: random.Random, level: int) -> tuple[str, str, str, dict] | None:
    count, hi, tmax = _COUNTDOWN_LEVELS[level]
    numbers = [rng.randint(1, hi) for _ in range(count)]
    pool = [_Expr(str(n), n, 3) for n in numbers]
    steps = []
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        a, b = pool[i], pool[j]
        op = rng.choice("+-*/")
        if op == "/" and (b.value == 0 or a.value % b.value != 0 or b.value == 1):
            op = rng.choice("+*")
        if op == "-" and a.value < b.value:
            a, b = b, a
        new = _combine(a, op, b)
        steps.append(_step_text(a.value, op, b.value, new.value))
        pool = [e for k, e in enumerate(pool) if k not in (i, j)] + [new]
    target = pool[0].value
    if not (1 <= target <= tmax) or target in numbers:
        return None
    shown = numbers[:]
    rng.shuffle(shown)
    prompt = f"Use {' '.join(map(str, shown))} to make {target}."
    solution = " ".join(steps) + f" \\boxed{{{pool[0].text}}}"
    return prompt, str(target), solution, {"numbers": shown, "target": target}


_GENERATORS = {"arith": _arith, "countdown": _countdown}


# ----------------------------------------------------------------------------- splits


def split_of(prompt: str) -> str:
    """'eval' (held-out test), 'val' (validation) or 'train': a hash of the prompt alone, so
    the splits never mix, whatever the seeds."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return {0: "eval", 1: "val"}.get(int.from_bytes(digest, "little") % BUCKETS, "train")


def generate(
    num: int,
    split: str = "train",
    seed: int = 0,
    families: tuple[str, ...] = FAMILIES,
    levels: tuple[int, ...] = LEVELS,
    unique: bool | None = None,
) -> list[Problem]:
    """``num`` problems of ``split`` ('train', 'val' or 'eval'), families and levels in round-robin
    (so every (family, level) cell gets ``num / (len(families) * len(levels))`` problems).

    Deterministic for a given (num, split, seed, families, levels). With ``unique`` (default: on
    for 'eval', off for 'train', whose easy cells hold only a few hundred distinct prompts) no
    prompt repeats within the returned list.
    """
    if unique is None:
        unique = split != "train"
    if split not in SPLITS:
        raise ValueError(f"split ({split!r}) must be one of {SPLITS}")
    for fam in families:
        if fam not in _GENERATORS:
            raise ValueError(f"unknown task family {fam!r}; choose from {sorted(_GENERATORS)}")
    for lvl in levels:
        if lvl not in LEVELS:
            raise ValueError(f"level {lvl} is not one of {LEVELS}")
    rng = random.Random(f"{seed}-{split}")
    cells = [(f, lvl) for lvl in levels for f in families]
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < num:
        fam, lvl = cells[len(out) % len(cells)]
        attempts += 1
        if attempts > 200 * num + 10_000:
            raise RuntimeError(
                f"could not generate {num} unique {split} problems for {families} x {levels}; "
                "ask for fewer or set unique=False"
            )
        made = _GENERATORS[fam](rng, lvl)
        if made is None:
            continue
        prompt, answer, solution, meta = made
        if split_of(prompt) != split or (unique and prompt in seen):
            continue
        seen.add(prompt)
        pid = f"{fam}-L{lvl}-{split}-{seed}-{len(out)}"
        out.append(Problem(pid, fam, prompt, answer, solution, lvl, meta))
    return out
