"""Split a pair file into train and held-out files by whole queries.

    python -m mm_rlhf_jax.data.split --pairs /data/MM-RLHF/dpo_pairs.jsonl --out /data/split \\
        --heldout_fraction 0.05 --seed 0

Every pair of a query (same `id`; records.py says how a query is identified without one) lands on the
same side, so no held-out query was seen in training through another of its pairs. The held-out
queries are round(fraction * #queries) of the sorted query ids, permuted by `seed`
(numpy default_rng): the same file and seed give the same split, whatever the line order.
Writes <out>/train/dpo_pairs.jsonl, <out>/heldout/dpo_pairs.jsonl (each pair's JSON object unchanged,
in file order) and <out>/split.json (counts, seed, the held-out ids). Every line is validated as a
pair record first (errors name file, line and field). Media paths stay relative to the source
file's folder: run with --config.data.media_root=<that folder>.
"""

import json

import numpy as np
from absl import app, flags

from mm_rlhf_jax import storage
from mm_rlhf_jax.data.records import parse_pair
from mm_rlhf_jax.data.validation import read_jsonl

PAIRS_NAME = "dpo_pairs.jsonl"


def split_pairs(pairs: str, out: str, *, heldout_fraction: float, seed: int) -> dict:
    """Writes the two files and split.json under `out`; returns the split.json summary."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction} must be in (0, 1)")
    rows = [(parse_pair(obj, where).id, obj) for where, obj in read_jsonl(pairs)]  # validates every line
    ids = sorted({qid for qid, _ in rows})
    n_heldout = round(heldout_fraction * len(ids))
    if not 0 < n_heldout < len(ids):
        raise ValueError(f"{pairs}: {len(ids)} queries and heldout_fraction={heldout_fraction} give "
                         f"{n_heldout} held-out queries; both sides need at least one")
    order = np.random.default_rng(seed).permutation(len(ids))
    heldout = {ids[i] for i in order[:n_heldout]}
    sides = {"train": [o for q, o in rows if q not in heldout], "heldout": [o for q, o in rows if q in heldout]}
    for side, objs in sides.items():
        storage.makedirs(storage.join(out, side))
        storage.write_atomic(storage.join(out, side, PAIRS_NAME),
                             "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs))
    summary = {"source": pairs, "seed": seed, "heldout_fraction": heldout_fraction,
               "queries": {"train": len(ids) - n_heldout, "heldout": n_heldout},
               "pairs": {side: len(objs) for side, objs in sides.items()},
               "media_root": storage.dirname(pairs), "heldout_ids": sorted(heldout)}
    storage.write_atomic(storage.join(out, "split.json"), json.dumps(summary, indent=1, ensure_ascii=False))
    return summary


flags.DEFINE_string("pairs", None, "the dpo_pairs.jsonl to split")
flags.DEFINE_string("out", None, "folder for train/, heldout/ and split.json")
flags.DEFINE_float("heldout_fraction", None, "share of the queries held out, in (0, 1)")
flags.DEFINE_integer("seed", 0, "permutation seed")


def main(argv):
    del argv
    f = flags.FLAGS
    summary = split_pairs(f.pairs, f.out, heldout_fraction=f.heldout_fraction, seed=f.seed)
    print(json.dumps({k: v for k, v in summary.items() if k != "heldout_ids"}), flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["pairs", "out", "heldout_fraction"])
    app.run(main)
