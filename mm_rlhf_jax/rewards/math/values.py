"""Structured answers: scalars, tuples/intervals, sets/lists, unions, equations.

`parse_answer(text)` normalises one extracted answer and reads its top-level
structure before handing the pieces to `parse.parse_expression`:

  A \\cup B \\cup ...     Union of intervals (compared as an unordered set)
  a or b, a and b, a; b Collection (unordered)
  {a, b, ...}           Collection (a set; `\\{..\\}` after normalisation)
  (a, b], [a, b), (a,b) Seq with its bracket characters (tuple or interval):
                        (1, 2) != [1, 2] and (1, 2) != 1, 2
  a, b, ...             Collection: a bare list of answers is unordered
  a \\pm b, \\pm b        Collection {a + b, a - b}, {b, -b}
  x = a, x \\in S        the right-hand side, when the left is one variable
  lhs = rhs             Equation
  a%                    Scalar with percent=True
  words only            Text ("Monday"; compared case-insensitively)
  anything else         Scalar, or Text when it does not parse as math
"""

import dataclasses
import re

import sympy as sp

from mm_rlhf_jax.rewards.math import normalize as math_normalize
from mm_rlhf_jax.rewards.math.parse import MAX_CHARS, ParseError, parse_expression

_OPEN, _CLOSE = "([{", ")]}"
_SEPARATORS = re.compile(r"\\text\{\s*(?:or|and)\s*\}|\s(?:or|and)\s|;")
_SIMPLE_LHS = re.compile(r"^\s*(?:[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+)\s*$")


@dataclasses.dataclass(frozen=True)
class Scalar:
    expr: sp.Basic
    percent: bool = False


@dataclasses.dataclass(frozen=True)
class Seq:
    open: str
    close: str
    items: tuple


@dataclasses.dataclass(frozen=True)
class Collection:
    items: tuple


@dataclasses.dataclass(frozen=True)
class Union:
    parts: tuple


@dataclasses.dataclass(frozen=True)
class Equation:
    lhs: sp.Basic
    rhs: sp.Basic


@dataclasses.dataclass(frozen=True)
class Text:
    text: str


def split_top_level(text: str, separator) -> list:
    """Splits at matches of `separator` (a compiled regex) outside brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
        elif depth == 0:
            m = separator.match(text, i)
            if m is not None and m.end() > i:
                parts.append(text[start:i])
                start = i = m.end()
                continue
        i += 1
    parts.append(text[start:])
    return parts


def _outer_brackets(text: str):
    """(open, close, inner) when one bracket pair spans the whole text."""
    if len(text) < 2 or text[0] not in _OPEN or text[-1] not in _CLOSE:
        return None
    depth = 0
    for i, c in enumerate(text):
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0 and i != len(text) - 1:
                return None
    return (text[0], text[-1], text[1:-1]) if depth == 0 else None


_COMMA = re.compile(",")
_CUP = re.compile(r"\\cup")
_PM = re.compile(r"\\pm|\\mp")
_EQ = re.compile("=")
_IN = re.compile(r"\\in(?![A-Za-z])")


def _parse(text: str):
    text = text.strip()
    if not text:
        raise ParseError("empty answer")
    parts = split_top_level(text, _CUP)
    if len(parts) > 1:
        pieces = tuple(_parse(p) for p in parts)
        if not all(isinstance(p, Seq) and len(p.items) == 2 for p in pieces):
            raise ParseError("\\cup needs intervals")
        return Union(pieces)
    parts = split_top_level(text, _SEPARATORS)
    if len(parts) > 1:
        return Collection(tuple(_parse(p) for p in parts if p.strip()))
    for relation in (_IN, _EQ):
        parts = split_top_level(text, relation)
        if len(parts) == 2 and _SIMPLE_LHS.match(parts[0]):
            return _parse(parts[1])
    outer = _outer_brackets(text)
    if outer is not None:
        open_, close, inner = outer
        items = split_top_level(inner, _COMMA)
        if open_ == "{" and close == "}":
            if len(items) > 1:
                return Collection(tuple(_parse(p) for p in items))
        elif len(items) > 1 and (open_, close) != ("{", "}"):
            return Seq(open_, close, tuple(_scalar(p) for p in items))
    items = split_top_level(text, _COMMA)
    if len(items) > 1:
        return Collection(tuple(_parse(p) for p in items if p.strip()))
    parts = split_top_level(text, _PM)
    if len(parts) == 2:
        first = _scalar(parts[0]).expr if parts[0].strip() else sp.Integer(0)
        second = _scalar(parts[1]).expr
        return Collection((Scalar(first + second), Scalar(first - second)))
    parts = split_top_level(text, _EQ)
    if len(parts) == 2:
        return Equation(_scalar(parts[0]).expr, _scalar(parts[1]).expr)
    return _scalar(text)


def _scalar(text: str) -> Scalar:
    text = text.strip()
    percent = text.endswith("%")
    if percent:
        text = text[:-1].strip()
    if text.count("%"):
        raise ParseError("misplaced %")
    return Scalar(parse_expression(text), percent)


def parse_answer(answer: str):
    """The structured value of one final answer (never raises on bad math)."""
    text = math_normalize.normalize(answer)
    # Only words ("Monday", "Yes"): compare as text, not as letter products.
    words_only = re.fullmatch(r"[A-Za-z\s]+", text) and re.search(r"[A-Za-z]{2}", text)
    if len(text) <= MAX_CHARS and not words_only:
        try:
            return _parse(text)
        except (ParseError, RecursionError):
            pass
        except Exception:  # noqa: BLE001 - sympy may raise anything on odd input
            pass
    return Text(math_normalize.canonical_text(answer))
