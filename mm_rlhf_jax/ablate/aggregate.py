"""eval.json files of a table -> per-cell statistics over seeds and a verdict per comparison (JSON-able).

    data = aggregate(table, {"constant": {0: eval0, 1: eval1}, "paper": {...}})
    data["cells"]["paper"]["metrics"]["preference_accuracy"]
        -> {"values": {"0": 0.81, "1": 0.78}, "n": 2, "mean": 0.795, "std": 0.0212, "paper": None}
    data["comparisons"][0]
        -> {"a": "paper:preference_accuracy", "op": ">", "b": "constant:preference_accuracy", "source": ...,
            "mean_a": ..., "mean_b": ..., "agrees": True, "seeds_agree": 2, "seeds_compared": 2, ...}

std is the sample standard deviation over seeds (ddof = 1), 0 with one seed. A metric a seed's eval.json
lacks (or holds as a non-number) is left out for that seed. A comparison agrees when the means satisfy the
paper's direction; seeds_agree counts the seeds whose own two figures satisfy it (seeds having both).
Seeds are JSON object keys, so strings.
"""

import math

from mm_rlhf_jax.ablate.spec import OPS, Table


def _number(v) -> float | None:
    # bool is an int subclass but never a figure (e.g. short_context_ok)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def stats(values: dict[str, float]) -> dict:
    """{"values", "n", "mean", "std"} of per-seed values (mean and std None without any)."""
    xs = list(values.values())
    n = len(xs)
    mean = sum(xs) / n if n else None
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else (0.0 if n else None)
    return {"values": dict(values), "n": n, "mean": mean, "std": std}


def cell_metrics(table: Table, evals: dict[int, dict]) -> dict[str, dict]:
    """metric -> stats over the seeds' eval.json dicts."""
    out = {}
    for m in table.metrics:
        values = {str(s): x for s, e in sorted(evals.items()) if (x := _number(e.get(m))) is not None}
        out[m] = stats(values)
    return out


def verdict(op: str, a: dict, b: dict) -> dict:
    """Direction verdict of stats a `op` stats b: on the means, and per seed that has both."""
    f = OPS[op]
    agrees = f(a["mean"], b["mean"]) if a["mean"] is not None and b["mean"] is not None else None
    shared = sorted(set(a["values"]) & set(b["values"]), key=int)
    holding = [s for s in shared if f(a["values"][s], b["values"][s])]
    return {"mean_a": a["mean"], "mean_b": b["mean"], "agrees": agrees,
            "seeds_agree": len(holding), "seeds_compared": len(shared), "seeds_holding": holding}


def aggregate(table: Table, evals: dict[str, dict[int, dict]]) -> dict:
    """Statistics of the cells in `evals` ({cell: {seed: eval.json}}) and the comparisons among them."""
    cells = {}
    for label, by_seed in evals.items():
        cell = table.cell(label)
        metrics = cell_metrics(table, by_seed)
        for m, st in metrics.items():
            pv = cell.paper.get(m)
            st["paper"] = {"value": pv.value, "source": pv.source} if pv else None
        cells[label] = {"overrides": cell.overrides, "note": cell.note, "seeds": sorted(by_seed), "metrics": metrics}
    comparisons = []
    for c in table.comparisons:
        row = {"a": str(c.a), "op": c.op, "b": str(c.b), "source": c.source}
        if c.a.cell in cells and c.b.cell in cells:  # a --cells subset may leave a comparison out
            a, b = cells[c.a.cell]["metrics"][c.a.metric], cells[c.b.cell]["metrics"][c.b.metric]
            row.update(verdict(c.op, a, b))
            pa, pb = a["paper"], b["paper"]
            row["paper_a"], row["paper_b"] = (pa or {}).get("value"), (pb or {}).get("value")
            comparisons.append(row)
    return {"table": table.name, "title": table.title, "metrics": list(table.metrics), "cells": cells,
            "comparisons": comparisons, "notes": list(table.notes)}
