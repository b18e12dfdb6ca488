"""Accuracy and false accepts of the math verifiers on public suites and on ours.

    python bench/math_verifiers.py [--verifiers math,math_verify,math_combined]
        [--out DIR] [--workers 2] [--timeout 10]

Suites (labelled pairs; provenance in tests/rewards/public_math/README.md):
  math_verify   huggingface/Math-Verify's regression tests (269 pairs)
  nemo_skills   NVIDIA/NeMo-Skills tests/test_math_equal.py (58: 29 pairs, both orders)
  hendrycks     hendrycks/math modeling/math_equivalence_test.py (16)
  lighteval     huggingface/lighteval tests/unit/metrics/test_extractive_match.py,
                the 41 pairs not already in math_verify (multilingual, letters)
  public        the four above together
  math_verify_default   math_verify without the pairs labelled under non-default
                Math-Verify settings (precision 2/4/5, strict=False,
                allow_set_relation_comp=True)
  ours          tests/rewards/math_pairs.jsonl (this project's labelled set)

Prints one JSON object: per suite and verifier, rows, accuracy, false accepts
(count, and rate among the pairs labelled not equivalent), false rejects and
seconds. With --out, writes for every suite the pairs on which the verifiers
disagree (DIR/<suite>.disagreements.jsonl) and every verifier's errors
against the labels (DIR/<suite>.<verifier>.errors.jsonl), for review.
"""

import argparse
import json
import pathlib
import platform
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mm_rlhf_jax.rewards.math import crosscheck as cc, math_reward  # noqa: E402

_NON_DEFAULT = {"precision", "strict", "allow_set_relation_comp"}


def _suites() -> dict:
    public = ROOT / "tests" / "rewards" / "public_math"
    suites = {name: cc.load_pairs(public / f"{name}.jsonl")
              for name in ("math_verify", "nemo_skills", "hendrycks", "lighteval")}
    suites["public"] = [r for name in ("math_verify", "nemo_skills", "hendrycks", "lighteval")
                        for r in suites[name]]
    suites["math_verify_default"] = [r for r in suites["math_verify"]
                                     if not _NON_DEFAULT & set(r.get("options", {}))]
    suites["ours"] = cc.load_pairs(ROOT / "tests" / "rewards" / "math_pairs.jsonl")
    return suites


def _verifiers(names) -> dict:
    table = {"math": lambda: cc.per_pair(math_reward)}

    def math_verify():
        from mm_rlhf_jax.rewards.math.mathverify import math_verify_rewards
        return math_verify_rewards

    def math_combined():
        from mm_rlhf_jax.rewards.math.combined import combined_rewards
        return combined_rewards

    table.update(math_verify=math_verify, math_combined=math_combined)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown verifiers {unknown}; choose from {sorted(table)}")
    return {n: table[n]() for n in names}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verifiers", default="math,math_verify,math_combined")
    ap.add_argument("--out", type=pathlib.Path, help="folder for disagreements and errors")
    ap.add_argument("--workers", type=int, default=2, help="Math-Verify worker processes")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per Math-Verify verdict")
    args = ap.parse_args()
    names = [n.strip() for n in args.verifiers.split(",") if n.strip()]
    if {"math_verify", "math_combined"} & set(names):
        from mm_rlhf_jax.rewards.math import mathverify
        mathverify.configure(workers=args.workers, timeout_s=args.timeout)
    verifiers = _verifiers(names)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    result = {"commit": commit, "python": platform.python_version(), "suites": {}}
    for suite, rows in _suites().items():
        report = cc.crosscheck(rows, verifiers)
        result["suites"][suite] = report["verifiers"]
        result["suites"][suite]["disagreements"] = len(report["disagreements"])
        if args.out:
            cc.write_jsonl(report["disagreements"], args.out / f"{suite}.disagreements.jsonl")
            for name, errors in report["errors"].items():
                cc.write_jsonl(errors, args.out / f"{suite}.{name}.errors.jsonl")
    if "math_verify" in names or "math_combined" in names:
        from mm_rlhf_jax.rewards.math.mathverify import shared_pool
        result["math_verify_timeouts"] = shared_pool().timeouts
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
