"""Equality of structured answers; the numeric tolerance policy lives here.

Numbers: equal when exactly equal, or when their 30-digit values satisfy
|a - b| <= REL_TOL * max(|a|, |b|) or |a - b| <= ABS_TOL. With REL_TOL = 1e-6
a fraction matches its decimal expansion to 7 significant digits
(1/3 == 0.3333333) but not a rounded one (1/3 != 0.333, != 0.33).
Infinities match only the same infinity.

Percentages: when exactly one side carries `%`, p% matches x if x == p
(the percent sign was left out) or x == p/100 (a fraction): 50% == 50 ==
0.5. Without any % sign, 50 != 0.5.

Expressions with variables: equal values (within the tolerance above) at 4
fixed rational points for the union of their variables (distinct variables
get distinct values), at least 2 of which must be finite on both sides.
No simplify() call: evaluation is bounded by the parser's size guards.

Equations: lhs - rhs proportional to each other with one non-zero ratio
(x + y = 1 == 2x + 2y = 2). Sequences: same brackets, same length, equal
items in order. Collections and unions: equal as multisets.
"""

import sympy as sp

from mm_rlhf_jax.rewards.math.values import Collection, Equation, Scalar, Seq, Text, Union

REL_TOL = 1e-6
ABS_TOL = 1e-12
PRECISION = 30
MAX_ITEMS = 32
_POINT_VALUES = ((37, 19), (-13, 7), (5, 11), (23, 29), (-41, 17), (7, 3), (-3, 13), (19, 31))
_N_POINTS = 4
_INFINITIES = (sp.oo, -sp.oo, sp.zoo, sp.nan)


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
    if a == b:
        return True
    if a.has(*_INFINITIES) or b.has(*_INFINITIES):
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


def _equations_equal(a: Equation, b: Equation) -> bool:
    da, db = a.lhs - a.rhs, b.lhs - b.rhs
    symbols = da.free_symbols | db.free_symbols
    if da.free_symbols != db.free_symbols or not symbols:
        return expressions_equal(da, db) or expressions_equal(da, -db)
    ratio, valid = None, 0
    for subs in _points(symbols):
        va, vb = _numeric(da, subs), _numeric(db, subs)
        if va is None or vb is None or abs(vb) <= ABS_TOL:
            if va is not None and vb is not None and abs(va) > ABS_TOL:
                return False
            continue
        r = va / vb
        if ratio is None:
            ratio = r
        elif not _close(ratio, r):
            return False
        valid += 1
    return valid >= 2 and ratio is not None and abs(ratio) > ABS_TOL


def _multiset_equal(xs, ys) -> bool:
    """A perfect matching under values_equal (augmenting paths)."""
    if len(xs) != len(ys) or len(xs) > MAX_ITEMS:
        return False
    match_of_y = [-1] * len(ys)
    cache = {}

    def eq(i, j):
        if (i, j) not in cache:
            cache[i, j] = values_equal(xs[i], ys[j])
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


def values_equal(a, b) -> bool:
    """Equality of two `values` answers (see the module docstring)."""
    a, b = _unwrap(a), _unwrap(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, Scalar):
        return _scalars_equal(a, b)
    if isinstance(a, Seq):
        return ((a.open, a.close) == (b.open, b.close) and len(a.items) == len(b.items)
                and all(_scalars_equal(x, y) for x, y in zip(a.items, b.items)))
    if isinstance(a, Collection):
        return _multiset_equal(a.items, b.items)
    if isinstance(a, Union):
        return _multiset_equal(a.parts, b.parts)
    if isinstance(a, Equation):
        return _equations_equal(a, b)
    if isinstance(a, Text):
        return a.text == b.text
    raise TypeError(f"values_equal: unexpected value {a!r}")
