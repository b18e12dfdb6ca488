"""Builds tests/rewards/public_math/*.jsonl from other math verifiers' test files.

The labelled pairs of three public regression suites are read with `ast`
(literal values only; nothing from those files is imported or executed) and
written one pair a line:

    {"prediction": str, "reference": str, "expected": bool,
     "suite": str, "case": "<file>::<test>[<index>]", "options": {...}}

`options` holds the non-default checker settings a case was labelled under
(Math-Verify's `precision`, `strict`, `allow_set_relation_comp`, `match_types`),
so that a reader can tell a label that depends on them.

Suites (their revisions and licences are in tests/rewards/public_math/README.md):
  math_verify  huggingface/Math-Verify tests/*.py        (gold -> reference, pred -> prediction)
  nemo_skills  NVIDIA/NeMo-Skills tests/test_math_equal.py (pairs checked in both orders)
  hendrycks    hendrycks/math modeling/math_equivalence_test.py (test_in -> prediction)
  lighteval    huggingface/lighteval tests/unit/metrics/test_extractive_match.py, only the
               pairs not already in math_verify (its math tests were copied there)

    python bench/math_suites_import.py --math-verify DIR/tests \
        --nemo-skills FILE --hendrycks FILE --lighteval FILE --out tests/rewards/public_math
"""

import argparse
import ast
import json
import math
import pathlib

_MATH_VERIFY_FILES = ("test_all.py", "test_numina_cases.py", "test_open_thoughts.py",
                      "test_yujianll.py", "test_boxed.py", "test_strict.py")
_DEFAULTS = {"precision": 6, "strict": True, "allow_set_relation_comp": False,
             "match_types": ["latex", "expr"]}


def _value(node):
    """_literal, and an enum member such as `Language.FRENCH` as its name."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return _literal(node)


def _literal(node):
    """A constant, a constant division (`5 / 2`) or an f-string of constants and
    `math.sqrt(<number>)` fields (test_float_precision); None otherwise."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        a, b = _literal(node.left), _literal(node.right)
        return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
    if isinstance(node, ast.JoinedStr):
        parts = [_literal(v) for v in node.values]
        return "".join(parts) if all(isinstance(p, str) for p in parts) else None
    if isinstance(node, ast.FormattedValue):
        call = node.value
        if (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "sqrt"
                and getattr(call.func.value, "id", None) == "math" and len(call.args) == 1):
            spec = _literal(node.format_spec) if node.format_spec is not None else ""
            value = _literal(call.args[0])
            if isinstance(value, (int, float)) and isinstance(spec, str):
                return format(math.sqrt(value), spec)
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _parametrize(func):
    """(argnames, rows) of the function's @pytest.mark.parametrize, or None."""
    for dec in func.decorator_list:
        if isinstance(dec, ast.Call) and getattr(dec.func, "attr", None) == "parametrize":
            names = [n.strip() for n in _literal(dec.args[0]).split(",")]
            return names, dec.args[1].elts
    return None


def _call_options(func):
    """Keyword settings of the checker call in the test body (compare_strings/verify)."""
    options = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "compare_strings":
            for kw in node.keywords:
                if isinstance(kw.value, (ast.Constant, ast.List)):
                    options[kw.arg] = _literal(kw.value)
    return options


def math_verify_cases(test_dir: pathlib.Path):
    for name in _MATH_VERIFY_FILES:
        tree = ast.parse((test_dir / name).read_text(encoding="utf-8"))
        for func in tree.body:
            if not isinstance(func, ast.FunctionDef) or (spec := _parametrize(func)) is None:
                continue
            argnames, rows = spec
            fixed = _call_options(func)
            for i, row in enumerate(rows):
                values = dict(zip(argnames, (_literal(e) for e in row.elts)))
                if not (isinstance(values["gold"], str) and isinstance(values["pred"], str)):
                    raise ValueError(f"{name}::{func.name}[{i}]: not a literal pair")
                expected = values.pop("expected", values.pop("result", None))
                options = {**fixed, **{k: v for k, v in values.items() if k not in ("gold", "pred")}}
                options = {k: v for k, v in options.items() if _DEFAULTS.get(k) != v}
                yield {"prediction": values["pred"], "reference": values["gold"],
                       "expected": bool(expected), "suite": "math_verify",
                       "case": f"tests/{name}::{func.name}[{i}]", "options": options}


def lighteval_cases(path: pathlib.Path, seen: set):
    """Parametrized (gold, pred, expected[, language, match_type]) cases whose
    (pred, gold) is not in `seen`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for func in tree.body:
        if not isinstance(func, ast.FunctionDef) or (spec := _parametrize(func)) is None:
            continue
        argnames, rows = spec
        fixed = _call_options(func)
        for i, row in enumerate(rows):
            values = dict(zip(argnames, (_value(e) for e in row.elts)))
            if (values["pred"], values["gold"]) in seen:
                continue
            options = {**fixed, **{k: v for k, v in values.items()
                                   if k not in ("gold", "pred", "expected")}}
            options = {k: v for k, v in options.items() if _DEFAULTS.get(k) != v}
            yield {"prediction": values["pred"], "reference": values["gold"],
                   "expected": bool(values["expected"]), "suite": "lighteval",
                   "case": f"tests/unit/metrics/test_extractive_match.py::{func.name}[{i}]",
                   "options": options}


def nemo_skills_cases(path: pathlib.Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for func in tree.body:
        if not isinstance(func, ast.FunctionDef) or (spec := _parametrize(func)) is None:
            continue
        expected = func.name == "test_correct_examples"
        for i, row in enumerate(spec[1]):
            a, b = (_literal(e) for e in row.elts)
            if a is None or b is None:  # (0, None): not a pair of answers
                continue
            for order, (pred, ref) in enumerate(((a, b), (b, a))):
                yield {"prediction": str(pred), "reference": str(ref), "expected": expected,
                       "suite": "nemo_skills", "case": f"tests/test_math_equal.py::{func.name}[{i}].{order}",
                       "options": {}}


def hendrycks_cases(path: pathlib.Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for func in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            values, k = {}, 0
            for stmt in func.body:  # test_in = ...; test_out = ...; self.assertX(is_equiv(...))
                if isinstance(stmt, ast.Assign):
                    values[stmt.targets[0].id] = _literal(stmt.value)
                elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                    method = getattr(stmt.value.func, "attr", "")
                    if method in ("assertTrue", "assertFalse"):
                        yield {"prediction": values["test_in"], "reference": values["test_out"],
                               "expected": method == "assertTrue", "suite": "hendrycks",
                               "case": f"modeling/math_equivalence_test.py::{func.name}[{k}]", "options": {}}
                        k += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--math-verify", type=pathlib.Path, required=True, help="Math-Verify tests/ folder")
    ap.add_argument("--nemo-skills", type=pathlib.Path, required=True, help="tests/test_math_equal.py")
    ap.add_argument("--hendrycks", type=pathlib.Path, required=True,
                    help="modeling/math_equivalence_test.py")
    ap.add_argument("--lighteval", type=pathlib.Path, required=True,
                    help="tests/unit/metrics/test_extractive_match.py")
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    math_verify = list(math_verify_cases(args.math_verify))
    seen = {(r["prediction"], r["reference"]) for r in math_verify}
    for suite, rows in (("math_verify", math_verify),
                        ("nemo_skills", nemo_skills_cases(args.nemo_skills)),
                        ("hendrycks", hendrycks_cases(args.hendrycks)),
                        ("lighteval", lighteval_cases(args.lighteval, seen))):
        rows = list(rows)
        with open(args.out / f"{suite}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(json.dumps({"suite": suite, "pairs": len(rows),
                          "negatives": sum(not r["expected"] for r in rows)}))


if __name__ == "__main__":
    main()
