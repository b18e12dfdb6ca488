"""A safe parser from normalised answer text to sympy expressions.

Never calls eval (sympy's `parse_expr` does, so it is not used): a tokenizer
and a recursive-descent parser build sympy objects directly from a small
grammar:

    sum     := term (("+" | "-") term)*
    term    := signed (("*" | "/" | implicit) signed)*     implicit: 2x, 2\\pi, x(y+1)
    signed  := ("-" | "+") signed | power
    power   := postfix ("^" signed)?                       right-associative
    postfix := primary "!"*
    primary := number | letter[_sub] | constant | (sum) | {sum} | [sum] | |sum|
             | \\frac{a}{b} | \\sqrt[n]{a} | \\binom{n}{k} | function argument
             | \\lfloor sum \\rfloor | \\lceil sum \\rceil | \\text{number} | matrix
             | \\sum_{k=a}^{b} term | \\prod_{k=a}^{b} term
    matrix  := a matrix environment (lexer.py), each cell a sum; matrices
               add, multiply, scale and take small integer powers as sympy
               matrices

Conventions: `e` is Euler's number and `i` the imaginary unit; `\\log` and
`ln` are natural logarithms (`\\log_b x` has base b); a word of two or three
letters is a product of single-letter variables (`xy`, `abc`) and a longer
one is prose (not math). Units: trailing words set off by a space or wrapped
in `\\text{}` (and a few unspaced ones such as `cm`) are dropped, so
`12 \\text{cm}^2` == 12 and `7cm` == 7; a single trailing letter stays a
variable (`5 m` is 5m), except after a slash inside a unit (`km/h`).

Size guards keep a hostile answer from exhausting time or memory: the text
is capped at `MAX_CHARS`, numeric exponents at `MAX_EXPONENT`, exact powers
at `MAX_DIGITS` digits, factorials and binomials at `MAX_FACTORIAL`.
Everything unparseable raises `ParseError`.
"""


import re

import sympy as sp

from mm_rlhf_jax.rewards.math import lexer
from mm_rlhf_jax.rewards.math.lexer import CONSTANTS, FUNCTIONS, MAX_CHARS, ParseError

__all__ = ["MAX_CHARS", "ParseError", "parse_expression", "tokenize"]

MAX_EXPONENT = 1000
MAX_DIGITS = 10_000
MAX_FACTORIAL = 1000
MAX_MATRIX_POWER = 8
MAX_SERIES_TERMS = 1000
_UNIT_WORDS = {"cm", "mm", "km", "kg", "mg", "ml", "ft", "yd", "mi", "mph", "lbs", "oz", "hr",
               "hrs", "min", "sec", "cents", "dollars", "units", "sq", "cu"}


def tokenize(text: str) -> list:
    """lexer.tokenize with matrix cells parsed by this grammar."""
    return lexer.tokenize(text, parse_expression)


def _int_digits(q):
    return max(len(str(abs(int(q.p)))), len(str(abs(int(q.q)))))


def _power(base, exponent):
    if isinstance(base, sp.MatrixBase):
        if not (exponent.is_Integer and abs(exponent) <= MAX_MATRIX_POWER):
            raise ParseError("matrix power needs a small integer exponent")
        return base ** int(exponent)
    if exponent.is_Number and exponent.is_finite and abs(exponent) > MAX_EXPONENT:
        raise ParseError("exponent too large")
    if base.is_Rational and exponent.is_Integer and base != 0:
        if _int_digits(base) * abs(int(exponent)) > MAX_DIGITS:
            raise ParseError("power too large")
    return sp.Pow(base, exponent)


def _power_of_ten(value, exponent):
    if abs(exponent) > MAX_EXPONENT:
        raise ParseError("exponent too large")
    return value * sp.Integer(10) ** exponent


def _bounded_int(value, what):
    if not (value.is_Integer and 0 <= value <= MAX_FACTORIAL):
        raise ParseError(f"{what} needs an integer in [0, {MAX_FACTORIAL}]")
    return int(value)


class _Parser:
    def __init__(self, tokens):
        self.tokens, self.pos = tokens, 0
        self.bound = set()  # series indices: plain symbols even when named e or i

    # -- token helpers -------------------------------------------------------
    def peek(self, offset=0):
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def at(self, kind, value=None):
        tok = self.peek()
        return tok is not None and tok.kind == kind and (value is None or tok.value == value)

    def take(self, kind=None, value=None):
        tok = self.peek()
        if tok is None or (kind and tok.kind != kind) or (value and tok.value != value):
            raise ParseError(f"expected {value or kind}, got {tok!r}")
        self.pos += 1
        return tok

    def units_tail(self):
        """Do the remaining tokens spell a unit (`cm^2`, `\\text{ m/s}`)?"""
        rest = self.tokens[self.pos:]
        if not rest:
            return False
        first = rest[0]
        if not (first.kind == "text" or (first.kind == "word" and (
                first.space or first.value.lower() in _UNIT_WORDS))):
            return False
        for i, tok in enumerate(rest):
            if tok.kind == "letter" and not (i > 0 and rest[i - 1].value == "/"):
                return False  # a lone letter is a variable, except in km/h
            if tok.kind in ("text", "word", "letter"):
                if tok.kind == "text" and not re.fullmatch(r"[A-Za-z .^/{}0-9]*", tok.value):
                    return False
                continue
            if tok.kind == "op" and tok.value in ("^", "/", "{", "}"):
                continue
            if tok.kind == "num" and i > 0 and rest[i - 1].value in ("^", "{"):
                continue
            return False
        return True

    # -- grammar ---------------------------------------------------------------
    def parse(self):
        expr = self.sum()
        if self.peek() is not None and not self.units_tail():
            raise ParseError(f"unexpected {self.peek()!r}")
        return expr

    def sum(self):
        expr = self.term()
        while self.at("op", "+") or self.at("op", "-"):
            op = self.take().value
            right = self.term()
            expr = expr + right if op == "+" else expr - right
        return expr

    def starts_primary(self):
        tok = self.peek()
        if tok is None:
            return False
        if tok.kind in ("letter", "cmd"):
            return tok.value not in ("rfloor", "rceil", "rvert", "mid")
        if tok.kind == "matrix":
            return True
        if tok.kind == "word":
            return not self.units_tail()
        return tok.kind == "op" and tok.value in ("(", "{")

    def term(self):
        expr = self.signed()
        while True:
            if self.at("op", "*") or self.at("op", "/"):
                op = self.take().value
                right = self.signed()
                expr = expr * right if op == "*" else expr / right
            elif self.starts_primary():
                expr = expr * self.power()
            else:
                return expr

    def signed(self):
        if self.at("op", "-"):
            self.take()
            return -self.signed()
        if self.at("op", "+"):
            self.take()
            return self.signed()
        return self.power()

    def power(self):
        base = self.postfix()
        if self.at("op", "^"):
            self.take()
            return _power(base, self.signed())
        return base

    def postfix(self):
        expr = self.primary()
        while self.at("op", "!"):
            self.take()
            expr = sp.factorial(_bounded_int(expr, "factorial"))
        return expr

    def group(self):
        """A `{...}` argument (normalisation braced one-character ones)."""
        self.take("op", "{")
        expr = self.sum()
        self.take("op", "}")
        return expr

    def primary(self):
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end")
        if tok.kind == "matrix":
            return self.take().value
        if tok.kind == "num":
            self.take()
            mantissa, _, exponent = tok.value.lower().partition("e")
            value = sp.Rational(mantissa)  # exact: 0.1 is 1/10
            return _power_of_ten(value, int(exponent)) if exponent else value
        if tok.kind == "letter":
            return self.symbol()
        if tok.kind == "word":
            if len(tok.value) > 3:  # prose, not a product of variables
                raise ParseError(f"word {tok.value!r} is not math")
            self.take()
            return sp.Mul(*[sp.Symbol(c) for c in tok.value])
        if tok.kind == "text":
            if re.search(r"[A-Za-z]{2}", tok.value):
                raise ParseError(f"text {tok.value!r} is not math")
            self.take()
            return _Parser(tokenize(tok.value)).parse()
        if tok.kind == "op":
            closing = {"(": ")", "{": "}", "[": "]", "|": "|"}.get(tok.value)
            if closing is None:
                raise ParseError(f"unexpected {tok.value!r}")
            self.take()
            expr = self.sum()
            self.take("op", closing)
            return sp.Abs(expr) if closing == "|" else expr
        return self.command(self.take().value)

    def symbol(self):
        name = self.take("letter").value
        if name == "e" and not self.at("op", "_") and name not in self.bound:
            return sp.E
        if name == "i" and not self.at("op", "_") and name not in self.bound:
            return sp.I
        if self.at("op", "_"):
            self.take()
            if self.at("op", "{"):
                self.take()
                parts = []
                while not self.at("op", "}"):
                    parts.append(self.take().value)
                self.take()
                name += "_" + "".join(parts)
            else:
                name += "_" + self.take().value
        return sp.Symbol(name)

    def command(self, name):
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name == "frac":
            numerator = self.group()
            return numerator / self.group()
        if name in ("sum", "prod"):
            return self.series(name)
        if name == "binom":
            n, k = self.group(), self.group()
            return sp.binomial(_bounded_int(n, "binom"), _bounded_int(k, "binom"))
        if name == "sqrt":
            if self.at("op", "["):
                self.take()
                index = self.sum()
                self.take("op", "]")
                return _power(self.group(), 1 / index)
            return sp.sqrt(self.group() if self.at("op", "{") else self.argument())
        if name in ("lfloor", "lceil"):
            expr = self.sum()
            self.take("cmd", "rfloor" if name == "lfloor" else "rceil")
            return sp.floor(expr) if name == "lfloor" else sp.ceiling(expr)
        if name in ("lvert", "vert"):
            expr = self.sum()
            self.take("cmd", "rvert" if name == "lvert" else "vert")
            return sp.Abs(expr)
        if name in FUNCTIONS:
            return self.function(name)
        raise ParseError(f"unexpected \\{name}")

    def series(self, name):
        """`\\sum_{k=a}^{b} term` (and \\prod): evaluated when a and b are
        integers at most MAX_SERIES_TERMS apart, else kept unevaluated (then
        compared only structurally, see compare.py)."""
        self.take("op", "_")
        braced = self.at("op", "{")
        if braced:
            self.take()
        index = sp.Symbol(self.take("letter").value)
        self.take("op", "=")
        low = self.sum() if braced else self.primary()
        if braced:
            self.take("op", "}")
        self.take("op", "^")
        high = self.group() if self.at("op", "{") else self.primary()
        self.bound.add(index.name)  # the index i (or e) is not the imaginary unit here
        try:
            term = self.term()
        finally:
            self.bound.discard(index.name)
        cls = sp.Sum if name == "sum" else sp.Product
        if low.is_Integer and high.is_Integer:
            if not 0 <= int(high) - int(low) < MAX_SERIES_TERMS:
                raise ParseError(f"\\{name} with more than {MAX_SERIES_TERMS} terms")
            return cls(term, (index, low, high)).doit()
        return cls(term, (index, low, high))

    def argument(self):
        """A function argument: (..), {..}, or the next power (\\sin x, \\ln 2)."""
        if self.at("op", "(") or self.at("op", "{"):
            return self.primary()
        return self.power()

    def function(self, name):
        base, exponent = None, None
        if name == "log" and self.at("op", "_"):
            self.take()
            base = self.group() if self.at("op", "{") else self.primary()
        if self.at("op", "^"):  # \sin^2 x
            self.take()
            exponent = self.group() if self.at("op", "{") else self.primary()
        arg = self.argument()
        value = sp.log(arg, base) if base is not None else FUNCTIONS[name](arg)
        return _power(value, exponent) if exponent is not None else value


def parse_expression(text: str) -> sp.Expr:
    """A sympy expression for `text` (already normalised), or ParseError."""
    tokens = tokenize(text)
    if not tokens:
        raise ParseError("empty expression")
    try:
        expr = _Parser(tokens).parse()
    except ParseError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError) as e:
        raise ParseError(str(e)) from None  # ValueError: sympy's shape and inversion errors
    if not isinstance(expr, sp.Basic):
        raise ParseError("not an expression")
    return expr

