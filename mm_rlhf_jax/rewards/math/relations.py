"""Relations in an answer: `=` chains, `\\approx`, inequalities, named values.

Policies (the structures are defined in values.py):

  * A name is the left side of a labelled answer: letters or Greek letters
    with subscripts and primes, function values (`f(x)`, `W(n)`, `P(A)`),
    and names joined by `:`, `/`, `\\frac`, `|..|` or a tuple of names
    (`AB`, `x_1`, `|AB|`, `A:B`, `\\frac{NO}{BO}`, `(p, q)`). No digits
    outside subscripts and function arguments, no operators, no other commands.
  * `name = value` is Labeled(name, value): it equals `value` alone
    (`k = 1` == 1, `(p,q) = (3,2)` == (3,2)); see compare.py for when the
    names themselves are compared.
  * A chain `a = b = c` is a worked computation; its answer is its last
    exact part: `x = 5+5+1 = 11` is x = 11. Parts after a `\\approx` are
    approximations: `x = 1/3 \\approx 0.33` is x = 1/3, `\\frac{\\sqrt3}{3}
    \\approx 0.577` is the fraction, and `x \\approx 11` (nothing exact) is 11.
  * Two numeric sides (`1/2 = 10/9`) are a computation too: the last part.
  * Anything else with one `=` is an Equation (`2x + 4y - 3 = 0`), compared
    as an equation; `7 = 11a + c` is not the answer `11a + c`.
  * `<`, `>`, `\\le`, `\\ge`, `\\neq` (and `<=`, `>=`, `!=`, `\\lt`, `\\gt`, ...)
    make a Relation, compared after flipping `>` into `<`: `x \\geq 5` ==
    `5 \\leq x`, `-x > -1` == `x < 1`. A relation bounding one name
    (`-2 \\le x \\le 7`, `x > 5`, `0 < f(x) < 1`) also equals that interval.
"""

import re

from mm_rlhf_jax.rewards.math.parse import ParseError

# Canonical operator for each spelling; the order puts longer spellings first.
_REL_SPELLINGS = (
    ("\\leqslant", "<="), ("\\geqslant", ">="), ("\\leq", "<="), ("\\geq", ">="),
    ("\\le", "<="), ("\\ge", ">="), ("\\lt", "<"), ("\\gt", ">"), ("\\neq", "!="),
    ("\\ne", "!="), ("<=", "<="), (">=", ">="), ("=<", "<="), ("=>", ">="), ("!=", "!="),
    ("<", "<"), (">", ">"),
)
RELATION = re.compile("|".join(
    re.escape(s) + (r"(?![A-Za-z])" if s[0] == "\\" else "") for s, _ in _REL_SPELLINGS))
_CANONICAL = {s: op for s, op in _REL_SPELLINGS}
# `=` that is not part of `<=`, `>=`, `!=`, `=<`, `=>`; and `\approx`.
EQUALITY = re.compile(r"(?<![<>!=])=(?![<>=])|\\approx(?![A-Za-z])")

_NAME_DECORATIONS = re.compile(
    r"_\{[^{}]*\}|_\\?\w|\^\{?\\prime\}?|'|\\(?:frac|angle|overline|vec|hat|bar|mathbf|text)"
    r"(?![A-Za-z])")
_FUNCTION_ARGS = re.compile(r"(?<=[A-Za-z}])\([^()]*\)")
_GREEK = re.compile(r"\\(?:alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|"
                    r"iota|kappa|lambda|mu|nu|xi|rho|sigma|tau|phi|varphi|chi|psi|omega|"
                    r"Gamma|Delta|Theta|Lambda|Xi|Sigma|Phi|Psi|Omega)(?![A-Za-z])")


def operator(spelling: str) -> str:
    """The canonical operator ("<", "<=", ">", ">=", "!=") of a RELATION match."""
    return _CANONICAL[spelling]


def is_name(text: str) -> bool:
    """Is `text` (normalised) a name, the left side of a labelled answer?"""
    text = text.strip()
    if not text or len(text) > 40:
        return False
    stripped = _GREEK.sub("A", _FUNCTION_ARGS.sub("", _NAME_DECORATIONS.sub("", text)))
    if re.search(r"[A-Za-z0-9]\s+[A-Za-z0-9]", stripped):
        return False  # words of prose ("we find x"), not one name
    stripped = re.sub(r"[{}()\[\]|:/,\s]", "", stripped)
    return bool(re.fullmatch(r"[A-Za-z]{1,12}", stripped))


def chain_answer(parts: list, separators: list) -> tuple[int, bool]:
    """(index of the answer part, whether the first part is a name) for an
    `=`/`\\approx` chain with len(parts) >= 3 or a single `\\approx`."""
    named = is_name(parts[0])
    first = 1 if named else 0
    exact = [i for i in range(first, len(parts))
             if i == 0 or not any("approx" in s for s in separators[:i])]
    return (exact[-1] if exact else len(parts) - 1), named


def split_relation(text: str, split_top_level):
    """(parts, operators) at top-level inequality signs, or None when there are none."""
    ops = []
    pieces = split_top_level(text, RELATION, found=ops)
    if len(pieces) < 2:
        return None
    if any(not p.strip() for p in pieces):
        raise ParseError(f"relation with an empty side: {text!r}")
    return pieces, [operator(o) for o in ops]
