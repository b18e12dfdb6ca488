"""Equality of structured answers; the numeric tolerance policy lives here.

Numbers: equal when exactly equal, or when their 30-digit values satisfy
|a - b| <= REL_TOL * max(|a|, |b|) or |a - b| <= ABS_TOL. With REL_TOL = 1e-6
a fraction matches its decimal expansion to 7 significant digits
(1/3 == 0.3333333) but not a rounded one (1/3 != 0.333, != 0.33).
Infinities match only the same infinity, and series with symbolic bounds
(`\\sum_{k=0}^{n-1} ...`) only the same series up to sympy's canonical order.

Percentages: when exactly one side carries `%`, p% matches x if x == p
(the percent sign was left out) or x == p/100 (a fraction): 50% == 50 ==
0.5. Without any % sign, 50 != 0.5.

Expressions with variables: equal values (within the tolerance above) at 4
fixed rational points for the union of their variables (distinct variables
get distinct values), at least 2 of which must be finite on both sides.
No simplify() call: evaluation is bounded by the parser's size guards.

Matrices: same shape, entries equal as above (the environment, pmatrix or
bmatrix, does not matter).

Equations: lhs - rhs proportional to each other with one non-zero ratio
(x + y = 1 == 2x + 2y = 2). Relations: after flipping `>`/`>=` chains into
`<`/`<=`, the same operators and, for one operator, rhs - lhs proportional
with a positive ratio (any non-zero ratio for `!=`); longer chains compare
part by part. A relation that bounds one name (`-2 <= x <= 7`, `x > 5`)
equals the interval it describes ([-2, 7], (5, oo)).

Labelled values (`x = 3`, `(p, q) = (3, 2)`) equal their value, and a
labelled `y = 2x + 1` equals the equation 2x - y + 1 = 0. Names are compared
only in lists where both sides label every item with the same names:
`a = 2, b = 19` != `a = 19, b = 2`, but `a = 2, b = 19` == `2, 19`. A bare
list of labelled values in order equals a tuple: `x = 1, y = 2` == (1, 2).

Sequences: same brackets, same length, equal items in order. Collections and
unions: equal as multisets. A bare `d,dd` list also equals its decimal-comma
reading (values.py).
"""

import sympy as sp

from mm_rlhf_jax.rewards.math.values import (Collection, Equation, Labeled, Relation, Scalar,
                                             Seq, Text, Union)

REL_TOL = 1e-6
ABS_TOL = 1e-12
PRECISION = 30
MAX_ITEMS = 32
_POINT_VALUES = ((37, 19), (-13, 7), (5, 11), (23, 29), (-41, 17), (7, 3), (-3, 13), (19, 31))
_N_POINTS = 4
_INFINITIES = (sp.oo, -sp.oo, sp.zoo, sp.nan)
_UNEVALUATED = (sp.Sum, sp.Product)  # series with symbolic bounds (parse.py)


def _numeric(expr, subs=None):
    try:
        value = expr.evalf(PRECISION, subs=subs)
        if value.free_symbols:
            return None
        value = complex(value)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError):
        return None
    if value != value or abs(value) == float("inf"):
        return None
    return value


def _close(x, y):
    diff = abs(x - y)
    return diff <= ABS_TOL or diff <= REL_TOL * max(abs(x), abs(y))


def _points(symbols):
    ordered = sorted(symbols, key=lambda s: s.name)
    for p in range(_N_POINTS):
        yield {s: sp.Rational(*_POINT_VALUES[(p + 3 * k) % len(_POINT_VALUES)])
               for k, s in enumerate(ordered)}


def expressions_equal(a, b) -> bool:
    """Numeric/symbolic equality under the module's tolerance policy."""
    if isinstance(a, sp.MatrixBase) or isinstance(b, sp.MatrixBase):
        return (isinstance(a, sp.MatrixBase) and isinstance(b, sp.MatrixBase)
                and a.shape == b.shape and all(expressions_equal(x, y) for x, y in zip(a, b)))
    if a == b:
        return True
    if a.has(*_INFINITIES, *_UNEVALUATED) or b.has(*_INFINITIES, *_UNEVALUATED):
        return False  # structural equality above is the only way to match
    symbols = a.free_symbols | b.free_symbols
    if not symbols:
        va, vb = _numeric(a), _numeric(b)
        return va is not None and vb is not None and _close(va, vb)
    valid = 0
    for subs in _points(symbols):  # the union: sin^2 x + cos^2 x == 1
        va, vb = _numeric(a, subs), _numeric(b, subs)
        if va is None or vb is None:
            continue
        if not _close(va, vb):
            return False
        valid += 1
    return valid >= 2


def _scalars_equal(a: Scalar, b: Scalar) -> bool:
    if a.percent == b.percent:
        return expressions_equal(a.expr, b.expr)
    percent, other = (a, b) if a.percent else (b, a)
    return (expressions_equal(percent.expr, other.expr)
            or expressions_equal(percent.expr / 100, other.expr))


def _ratio(da, db):
    """The constant c with da == c * db (at the fixed points), or None."""
    symbols = da.free_symbols | db.free_symbols
    if da.free_symbols != db.free_symbols or not symbols:
        for c in (1, -1):
            if expressions_equal(da, c * db):
                return c
        return None
    ratio, valid = None, 0
    for subs in _points(symbols):
        va, vb = _numeric(da, subs), _numeric(db, subs)
        if va is None or vb is None or abs(vb) <= ABS_TOL:
            if va is not None and vb is not None and abs(va) > ABS_TOL:
                return None
            continue
        r = va / vb
        if ratio is None:
            ratio = r
        elif not _close(ratio, r):
            return None
        valid += 1
    return ratio if valid >= 2 and ratio is not None and abs(ratio) > ABS_TOL else None


def _equations_equal(a: Equation, b: Equation) -> bool:
    return _ratio(a.lhs - a.rhs, b.lhs - b.rhs) is not None


_FLIP = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "!=": "!="}


def _canonical(r: Relation) -> Relation:
    """`>`/`>=` chains read right to left as `<`/`<=` chains."""
    if r.ops and all(op in (">", ">=") for op in r.ops):
        return Relation(tuple(_FLIP[op] for op in reversed(r.ops)), r.parts[::-1], r.names[::-1])
    return r


def _relations_equal(a: Relation, b: Relation) -> bool:
    a, b = _canonical(a), _canonical(b)
    if a.ops != b.ops:
        return False
    if len(a.ops) > 1:
        return all(expressions_equal(x, y) for x, y in zip(a.parts, b.parts))
    ratio = _ratio(a.parts[1] - a.parts[0], b.parts[1] - b.parts[0])
    if ratio is None:
        return False
    return a.ops[0] == "!=" or (abs(ratio.imag) <= ABS_TOL and ratio.real > 0)


def relation_interval(r: Relation):
    """The interval (a Seq) a relation bounding one name describes, or None:
    `a < x <= b` is (a, b]; `x >= a` is [a, oo). Absolute values are not
    bounded names (|z| <= 1 is not [.., 1])."""
    r = _canonical(r)
    name_ok = [n is not None and "|" not in n for n in r.names]
    opens = {"<": "(", "<=": "["}
    closes = {"<": ")", "<=": "]"}
    if any(op not in opens for op in r.ops):
        return None
    if len(r.ops) == 2 and name_ok[1] and not name_ok[0] and not name_ok[2]:
        lo, hi, left, right = r.parts[0], r.parts[2], opens[r.ops[0]], closes[r.ops[1]]
    elif len(r.ops) == 1 and name_ok[0] and not name_ok[1]:
        lo, hi, left, right = -sp.oo, r.parts[1], "(", closes[r.ops[0]]
    elif len(r.ops) == 1 and name_ok[1] and not name_ok[0]:
        lo, hi, left, right = r.parts[0], sp.oo, opens[r.ops[0]], ")"
    else:
        return None
    return Seq(left, right, (Scalar(lo), Scalar(hi)))


def _multiset_equal(xs, ys, equal=None) -> bool:
    """A perfect matching under `equal` (values_equal; augmenting paths)."""
    equal = equal or values_equal
    if len(xs) != len(ys) or len(xs) > MAX_ITEMS:
        return False
    match_of_y = [-1] * len(ys)
    cache = {}

    def eq(i, j):
        if (i, j) not in cache:
            cache[i, j] = equal(xs[i], ys[j])
        return cache[i, j]

    def augment(i, seen):
        for j in range(len(ys)):
            if j not in seen and eq(i, j):
                seen.add(j)
                if match_of_y[j] < 0 or augment(match_of_y[j], seen):
                    match_of_y[j] = i
                    return True
        return False

    return all(augment(i, set()) for i in range(len(xs)))


def _unwrap(value):
    while isinstance(value, Collection) and len(value.items) == 1:
        value = value.items[0]
    return value


def _labeled_equal(a, b) -> bool:
    if isinstance(a, Labeled) and isinstance(b, Labeled):
        return values_equal(a.value, b.value)
    label, other = (a, b) if isinstance(a, Labeled) else (b, a)
    if (isinstance(other, Equation) and label.lhs is not None
            and isinstance(_unwrap(label.value), Scalar)):
        return _equations_equal(Equation(label.lhs, _unwrap(label.value).expr), other)
    return values_equal(label.value, other)


def _collections_equal(a: Collection, b: Collection) -> bool:
    labels_a = [x.name for x in a.items if isinstance(x, Labeled)]
    labels_b = [x.name for x in b.items if isinstance(x, Labeled)]
    if (len(labels_a) == len(a.items) and len(labels_b) == len(b.items)
            and sorted(labels_a) == sorted(labels_b)):  # the same names on both sides
        return _multiset_equal(a.items, b.items, lambda x, y: x.name == y.name
                               and values_equal(x.value, y.value))
    return _multiset_equal(a.items, b.items)


def _mixed_equal(a, b):
    """Equality across value types (module docstring), or None when a and b
    are not such a pair."""
    for x, y in ((a, b), (b, a)):
        if isinstance(x, Collection) and x.decimal is not None and isinstance(y, Scalar):
            return _scalars_equal(x.decimal, y)
        if isinstance(x, Relation) and isinstance(y, Seq):
            interval = relation_interval(x)
            return interval is not None and values_equal(interval, y)
        if (isinstance(x, Collection) and isinstance(y, Seq) and (y.open, y.close) == ("(", ")")
                and not x.braced and all(isinstance(i, Labeled) for i in x.items)):
            return len(x.items) == len(y.items) and all(
                values_equal(i.value, j) for i, j in zip(x.items, y.items))
    return None


def values_equal(a, b) -> bool:
    """Equality of two `values` answers (see the module docstring)."""
    a, b = _unwrap(a), _unwrap(b)
    if isinstance(a, Labeled) or isinstance(b, Labeled):
        return _labeled_equal(a, b)
    if type(a) is not type(b):
        mixed = _mixed_equal(a, b)
        return bool(mixed)
    if isinstance(a, Scalar):
        return _scalars_equal(a, b)
    if isinstance(a, Seq):
        return ((a.open, a.close) == (b.open, b.close) and len(a.items) == len(b.items)
                and all(_scalars_equal(x, y) for x, y in zip(a.items, b.items)))
    if isinstance(a, Collection):
        return _collections_equal(a, b)
    if isinstance(a, Union):
        return _multiset_equal(a.parts, b.parts)
    if isinstance(a, Equation):
        return _equations_equal(a, b)
    if isinstance(a, Relation):
        return _relations_equal(a, b)
    if isinstance(a, Text):
        return a.text == b.text
    raise TypeError(f"values_equal: unexpected value {a!r}")
