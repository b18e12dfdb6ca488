"""Tokens of a normalised math answer, for parse.py's grammar.

`tokenize(text, parse_cell)` turns text into tokens (kinds: num, cmd, letter,
word, op, text, matrix) with a flag for a space before them. Commands are
known by name; any other command is a ParseError, so unknown LaTeX never
reaches the grammar. Matrix environments become one `matrix` token holding a
sympy matrix whose cells `parse_cell` parsed:

    \\begin{pmatrix|bmatrix|Bmatrix|matrix|smallmatrix|array} rows \\end{..}

rows split at `\\\\`, cells at `&` (an empty last row is ignored; `array`'s
column specification is skipped). The environment does not matter:
pmatrix == bmatrix.
"""

import re

import sympy as sp

from mm_rlhf_jax.rewards.math.normalize import matching_brace

MAX_CHARS = 400
MAX_MATRIX_CELLS = 100


class ParseError(ValueError):
    """The text is not an expression this parser accepts."""


FUNCTIONS = {
    "sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "cot": sp.cot, "sec": sp.sec,
    "csc": sp.csc, "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan,
    "sinh": sp.sinh, "cosh": sp.cosh, "tanh": sp.tanh, "ln": sp.log, "log": sp.log,
    "exp": sp.exp,
}
CONSTANTS = {"pi": sp.pi, "infty": sp.oo, "infinity": sp.oo, "inf": sp.oo}
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta",
    "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau",
    "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta",
    "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega",
}
_OPERATOR_COMMANDS = {"cdot": "*", "times": "*", "div": "/", "ast": "*"}
_STRUCTURE_COMMANDS = {"frac", "sqrt", "binom", "lfloor", "rfloor", "lceil", "rceil",
                       "lvert", "rvert", "vert", "mid", "sum", "prod"}
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<cmd>\\[A-Za-z]+)
  | (?P<word>[A-Za-z]+)
  | (?P<op>\*\*|[-+*/^()\[\]{},!|=_%<>'])
""", re.VERBOSE)
_MATRIX_ENVS = ("pmatrix", "bmatrix", "Bmatrix", "matrix", "smallmatrix", "array")
_BEGIN = re.compile(r"\\begin\s*\{(\w+)\}")


def _split_cells(body: str, separator: str) -> list:
    """Splits at `separator` outside braces and nested environments."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(body):
        if body.startswith("\\begin", i) or body[i] == "{":
            depth += 1
        elif body.startswith("\\end", i) or body[i] == "}":
            depth -= 1
        if depth == 0 and body.startswith(separator, i):
            parts.append(body[start:i])
            i = start = i + len(separator)
            continue
        i += 2 if body[i] == "\\" and not body.startswith(separator, i) else 1
    parts.append(body[start:])
    return parts


def _matrix(text: str, i: int, parse_cell):
    """(sympy matrix, end index) for the environment starting at text[i]."""
    m = _BEGIN.match(text, i)
    env = m.group(1)
    if env not in _MATRIX_ENVS:
        raise ParseError(f"unsupported environment {env!r}")
    begin, end = re.compile(r"\\begin\s*\{" + env + r"\}"), re.compile(r"\\end\s*\{" + env + r"\}")
    depth, pos = 1, m.end()
    while depth:
        b, e = begin.search(text, pos), end.search(text, pos)
        if e is None:
            raise ParseError(f"unclosed {env}")
        if b is not None and b.start() < e.start():
            depth, pos = depth + 1, b.end()
        else:
            depth, pos = depth - 1, e.end()
            close = e
    body = text[m.end():close.start()]
    if env == "array":  # skip the column specification {cc}
        spec = re.match(r"\s*\{[^{}]*\}", body)
        body = body[spec.end():] if spec else body
    rows = [r for r in _split_cells(body, "\\\\") if r.strip()]
    cells = [[c for c in _split_cells(r, "&")] for r in rows]
    if not cells or len({len(r) for r in cells}) != 1:
        raise ParseError("ragged or empty matrix")
    if len(cells) * len(cells[0]) > MAX_MATRIX_CELLS:
        raise ParseError("matrix too large")
    return sp.ImmutableMatrix([[parse_cell(c.strip()) for c in r] for r in cells]), close.end()


class Token:
    __slots__ = ("kind", "value", "space")

    def __init__(self, kind, value, space):
        self.kind, self.value, self.space = kind, value, space

    def __repr__(self):
        return f"Token({self.kind}, {self.value!r})"


def tokenize(text: str, parse_cell) -> list:
    """Tokens (kind in num, cmd, letter, word, op, text, matrix) with a space flag."""
    if len(text) > MAX_CHARS:
        raise ParseError(f"answer longer than {MAX_CHARS} characters")
    tokens, i, space = [], 0, False
    while i < len(text):
        if text.startswith("\\text{", i):
            close = matching_brace(text, i + 5)
            if close < 0:
                raise ParseError("unbalanced \\text{")
            tokens.append(Token("text", text[i + 6:close].strip(), True))
            i, space = close + 1, False
            continue
        if text.startswith("\\begin", i):
            matrix, i = _matrix(text, i, parse_cell)
            tokens.append(Token("matrix", matrix, space))
            space = False
            continue
        m = _TOKEN.match(text, i)
        if m is None:
            raise ParseError(f"unexpected character {text[i]!r}")
        kind, value = m.lastgroup, m.group()
        i = m.end()
        if kind == "space":
            space = True
            continue
        if kind == "cmd":
            name = value[1:]
            if name in _OPERATOR_COMMANDS:
                kind, value = "op", _OPERATOR_COMMANDS[name]
            elif name in _GREEK:
                kind, value = "letter", name
            elif name in FUNCTIONS or name in CONSTANTS or name in _STRUCTURE_COMMANDS:
                value = name
            else:
                raise ParseError(f"unsupported command \\{name}")
        elif kind == "word":
            if value in FUNCTIONS or value in CONSTANTS or value == "sqrt":
                kind = "cmd"
            elif len(value) == 1:
                kind = "letter"
        elif value == "**":
            value = "^"
        tokens.append(Token(kind, value, space))
        space = False
    return tokens

