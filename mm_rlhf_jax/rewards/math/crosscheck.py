"""Runs math verifiers over the same pairs and collects where they disagree.

    rows = load_pairs(path)           # JSON lines: prediction, reference[, expected, ...]
    report = crosscheck(rows, {"math": per_pair(math_reward),
                               "math_verify": math_verify_rewards})
    report["verifiers"]["math"]       # pairs, labelled, accuracy, false_accepts, ...
    write_jsonl(report["disagreements"], "disagreements.jsonl")

A verifier here is a batch function: a list of (prediction, reference) ->
a list of rewards in {0.0, 1.0} (`per_pair` lifts a one-pair verifier).
Rows keep all their fields; `expected` (bool) is the label, optional: an
unlabelled set (real model outputs) still yields its disagreements, which are
the pairs worth labelling. Each disagreement is the row plus "verdicts":
{verifier name: bool}. Metrics, over labelled rows:

  accuracy            verdicts equal to the label / labelled rows
  false_accepts       accepted although labelled not equivalent
  false_accept_rate   false_accepts / rows labelled not equivalent
  false_rejects       rejected although labelled equivalent
  seconds             wall time of the verifier over all rows
"""

import json
import pathlib
import time


def per_pair(verifier):
    """A batch function from a (prediction, reference) -> float verifier."""
    return lambda pairs: [verifier(p, r) for p, r in pairs]


def load_pairs(path) -> list:
    rows = []
    for n, line in enumerate(pathlib.Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not (isinstance(row.get("prediction"), str) and isinstance(row.get("reference"), str)):
            raise ValueError(f"{path}:{n}: needs string fields 'prediction' and 'reference'")
        if "expected" in row and not isinstance(row["expected"], bool):
            raise ValueError(f"{path}:{n}: 'expected' must be true or false")
        rows.append(row)
    return rows


def _metrics(verdicts, rows, seconds) -> dict:
    labelled = [(v, r["expected"]) for v, r in zip(verdicts, rows) if "expected" in r]
    negatives = sum(not e for _, e in labelled)
    false_accepts = sum(v and not e for v, e in labelled)
    return {
        "pairs": len(rows), "labelled": len(labelled), "negatives": negatives,
        "accuracy": sum(v == e for v, e in labelled) / len(labelled) if labelled else None,
        "false_accepts": false_accepts,
        "false_accept_rate": false_accepts / negatives if negatives else None,
        "false_rejects": sum(e and not v for v, e in labelled),
        "seconds": round(seconds, 3),
    }


def crosscheck(rows, verifiers: dict) -> dict:
    """Metrics per verifier and the rows on which the verifiers disagree."""
    if not verifiers:
        raise ValueError("crosscheck needs at least one verifier")
    pairs = [(r["prediction"], r["reference"]) for r in rows]
    verdicts, report = {}, {"verifiers": {}}
    for name, batch in verifiers.items():
        start = time.perf_counter()
        rewards = list(batch(pairs))
        if len(rewards) != len(pairs) or any(x not in (0.0, 1.0) for x in rewards):
            raise ValueError(f"verifier {name!r} must return one reward in {{0.0, 1.0}} per pair")
        verdicts[name] = [x == 1.0 for x in rewards]
        report["verifiers"][name] = _metrics(verdicts[name], rows, time.perf_counter() - start)
    report["disagreements"] = [
        {**row, "verdicts": {name: verdicts[name][i] for name in verifiers}}
        for i, row in enumerate(rows) if len({verdicts[name][i] for name in verifiers}) > 1]
    report["errors"] = {name: [
        {**row, "verdict": verdicts[name][i]} for i, row in enumerate(rows)
        if "expected" in row and verdicts[name][i] != row["expected"]] for name in verifiers}
    return report


def write_jsonl(rows, path) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
