"""Structured answers: scalars, tuples/intervals, sets/lists, unions, relations.

`parse_answer(text)` normalises one extracted answer and reads its top-level
structure before handing the pieces to `parse.parse_expression`:

  A \\cup B \\cup ...     Union of intervals or sets (compared unordered)
  a or b, a and b, a; b Collection (unordered); `1or2`-style glued "or"
                        between a digit or bracket and the next answer too
  a < b, a \\le b < c    Relation (relations.py); `\\neq` too
  x = a, f(x) = a       Labeled: the value a under a name (relations.py)
  a = b = c, a \\approx b the last exact part of a computation chain
  lhs = rhs             Equation
  x \\in S               S under the name x
  {a, b, ...}           Collection, braced (a set; `\\{..\\}` after normalisation)
  (a, b], [a, b), (a,b) Seq with its bracket characters (tuple or interval):
                        (1, 2) != [1, 2] and (1, 2) != 1, 2; `(a; b)` too
  a, b, ...             Collection: a bare list of answers is unordered; nested
                        bare lists are flattened (`21, 16 or 11` is 3 answers)
  d,dd                  a bare list that may also be a decimal comma: `2,74`
                        equals 2.74 (and the list 2, 74); `1,234` is 1234
  a \\pm b, \\pm b        Collection {a + b, a - b}, {b, -b}
  a : b                 Scalar a/b (a ratio; b != 0)
  a%                    Scalar with percent=True
  words only            Text ("Monday"; compared case-insensitively)
  anything else         Scalar, or Text when it does not parse as math
"""

import dataclasses
import re

import sympy as sp

from mm_rlhf_jax.rewards.math import normalize as math_normalize, relations
from mm_rlhf_jax.rewards.math.parse import MAX_CHARS, ParseError, parse_expression

_OPEN, _CLOSE = "([{", ")]}"
_SEPARATORS = re.compile(r"\\text\{\s*(?:or|and)\s*\}|\s(?:or|and)\s|;"
                         r"|(?<=[0-9)\]}])\s*or\s*(?=[-A-Z0-9(\[{\\])")


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
    braced: bool = False  # written as a set {..}; bare lists are flattened into each other
    decimal: Scalar | None = None  # the decimal-comma reading of "2,74"


@dataclasses.dataclass(frozen=True)
class Union:
    parts: tuple


@dataclasses.dataclass(frozen=True)
class Equation:
    lhs: sp.Basic
    rhs: sp.Basic


@dataclasses.dataclass(frozen=True)
class Relation:
    ops: tuple  # canonical operators between consecutive parts: "<", "<=", ">", ">=", "!="
    parts: tuple  # sympy expressions
    names: tuple  # per part: its text when it is a name (relations.is_name), else None


@dataclasses.dataclass(frozen=True)
class Labeled:
    name: str  # the name as written (normalised, spaces removed)
    lhs: sp.Basic | None  # the name as an expression, when it parses (y in y = 2x + 1)
    value: object


@dataclasses.dataclass(frozen=True)
class Text:
    text: str


def split_top_level(text: str, separator, found=None) -> list:
    """Splits at matches of `separator` (a compiled regex) outside brackets and
    `\\begin..\\end` environments; the matched texts are appended to `found`."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in _OPEN or text.startswith("\\begin", i):
            depth += 1
        elif c in _CLOSE or text.startswith("\\end", i):
            depth -= 1
        elif depth == 0:
            m = separator.match(text, i)
            if m is not None and m.end() > i:
                parts.append(text[start:i])
                if found is not None:
                    found.append(m.group())
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
_SEMICOLON = re.compile(";")
_CUP = re.compile(r"\\cup")
_PM = re.compile(r"\\pm|\\mp")
_IN = re.compile(r"\\in(?![A-Za-z])")
_RATIO = re.compile(":")
_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")


def _bare(items) -> Collection:
    """A bare list; nested bare lists are flattened ("21, 16 or 11"), except
    groups of labelled values ("p=5, q=2; p=7, q=2" is two solutions)."""
    flat = []
    for item in items:
        if (isinstance(item, Collection) and not item.braced
                and not all(isinstance(x, Labeled) for x in item.items)):
            flat.extend(item.items)
        else:
            flat.append(item)
    return Collection(tuple(flat))


def _labeled(name_text: str, value) -> Labeled:
    try:
        lhs = _scalar(name_text).expr
    except (ParseError, RecursionError):
        lhs = None
    return Labeled(re.sub(r"\s+", "", name_text), lhs, value)


def _relation(pieces, ops):
    parts = tuple(_scalar(p).expr for p in pieces)
    names = tuple(re.sub(r"\s+", "", p) if relations.is_name(p) else None for p in pieces)
    return Relation(tuple(ops), parts, names)


def _is_numeric(text: str) -> bool:
    try:
        return not _scalar(text).expr.free_symbols
    except (ParseError, RecursionError):
        return False


def _equality(text: str, has_comma: bool):
    """The value of an `=`/`\\approx` chain (relations.py), or None when `text` has none."""
    seps = []
    parts = split_top_level(text, relations.EQUALITY, found=seps)
    if len(parts) < 2 or (has_comma and len(parts) > 2):
        return None  # "x = 1, y = 2" is a list of labelled answers
    if any(not p.strip() for p in parts):
        raise ParseError(f"empty side of = in {text!r}")
    if len(parts) == 2 and seps[0] == "=":
        if relations.is_name(parts[0]):
            return _labeled(parts[0], _parse(parts[1]))
        if _is_numeric(parts[0]) and _is_numeric(parts[1]):
            return _parse(parts[1])
        if has_comma:
            return None
        return Equation(_scalar(parts[0]).expr, _scalar(parts[1]).expr)
    index, named = relations.chain_answer(parts, seps)
    value = _parse(parts[index])
    return _labeled(parts[0], value) if named and index > 0 else value


def _parse(text: str):
    text = text.strip()
    if not text:
        raise ParseError("empty answer")
    parts = split_top_level(text, _CUP)
    if len(parts) > 1:
        pieces = tuple(_parse(p) for p in parts)
        if not all((isinstance(p, Seq) and len(p.items) == 2)
                   or (isinstance(p, Collection) and p.braced) for p in pieces):
            raise ParseError("\\cup needs intervals or sets")
        return Union(pieces)
    parts = split_top_level(text, _SEPARATORS)
    if len(parts) > 1:
        return _bare(_parse(p) for p in parts if p.strip())
    has_comma = len(split_top_level(text, _COMMA)) > 1
    relation = None if has_comma else relations.split_relation(text, split_top_level)
    if relation is not None:
        return _relation(*relation)
    value = _equality(text, has_comma)
    if value is not None:
        return value
    parts = split_top_level(text, _IN)
    if len(parts) == 2 and relations.is_name(parts[0]):
        return _labeled(parts[0], _parse(parts[1]))
    outer = _outer_brackets(text)
    if outer is not None:
        open_, close, inner = outer
        items = split_top_level(inner, _COMMA)
        if len(items) == 1:
            items = split_top_level(inner, _SEMICOLON)  # (0; -2; 6)
        if open_ == "{" and close == "}":
            if len(items) > 1:
                return Collection(tuple(_parse(p) for p in items), braced=True)
        elif len(items) > 1:
            return Seq(open_, close, tuple(_scalar(p) for p in items))
    items = split_top_level(text, _COMMA)
    if len(items) > 1:
        collection = _bare(_parse(p) for p in items if p.strip())
        if _DECIMAL_COMMA.fullmatch(text):
            return Collection(collection.items, decimal=_scalar(text.replace(",", ".")))
        return collection
    parts = split_top_level(text, _PM)
    if len(parts) == 2:
        first = _scalar(parts[0]).expr if parts[0].strip() else sp.Integer(0)
        second = _scalar(parts[1]).expr
        return Collection((Scalar(first + second), Scalar(first - second)))
    parts = split_top_level(text, _RATIO)
    if len(parts) == 2:
        numerator, denominator = _scalar(parts[0]).expr, _scalar(parts[1]).expr
        if denominator == 0:
            raise ParseError("ratio with a zero second term")  # 12:00 is a time: Text
        return Scalar(numerator / denominator)
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
