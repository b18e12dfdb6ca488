"""python -m mm_rlhf_jax.data.split: whole queries on one side, the requested share, deterministic by seed."""

import json
import os
import subprocess
import sys

import pytest

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.split import split_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _pairs_file(path, n_queries=20, reverse=False):
    """Queries with 1..4 pairs each (ids q0..), some with list-valued images, as the release may hold them."""
    rows = []
    for q in range(n_queries):
        for k in range(1 + q % 4):
            image = f"short/{q}.jpg" if q % 3 else [f"short/{q}.jpg"]
            rows.append({"id": f"q{q}", "prompt": f"question {q}", "chosen": f"good {k}", "rejected": f"bad {k}",
                         "image": image, "ls_factor": 0.1 * k})
    if reverse:
        rows = rows[::-1]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _read(path):
    return [json.loads(line) for line in open(path)]


def test_whole_queries_share_and_determinism(tmp_path):
    rows = _pairs_file(tmp_path / "pairs.jsonl")
    s = split_pairs(str(tmp_path / "pairs.jsonl"), str(tmp_path / "a"), heldout_fraction=0.25, seed=3)
    train, heldout = _read(tmp_path / "a/train/dpo_pairs.jsonl"), _read(tmp_path / "a/heldout/dpo_pairs.jsonl")
    train_q, heldout_q = {r["id"] for r in train}, {r["id"] for r in heldout}
    assert not train_q & heldout_q and len(heldout_q) == 5 and len(train_q) == 15  # 25 % of 20 queries
    assert sorted(heldout_q) == s["heldout_ids"] and s["pairs"] == {"train": len(train), "heldout": len(heldout)}
    # Every pair kept once, unchanged (list-valued images included), in file order on each side.
    assert [r for r in rows if r["id"] in train_q] == train and [r for r in rows if r["id"] in heldout_q] == heldout
    # The same seed gives the same split, also from a reordered file; another seed another one.
    _pairs_file(tmp_path / "reversed.jsonl", reverse=True)
    again = split_pairs(str(tmp_path / "reversed.jsonl"), str(tmp_path / "b"), heldout_fraction=0.25, seed=3)
    other = split_pairs(str(tmp_path / "pairs.jsonl"), str(tmp_path / "c"), heldout_fraction=0.25, seed=4)
    assert again["heldout_ids"] == s["heldout_ids"] != other["heldout_ids"]


def test_command_line(tmp_path):
    _pairs_file(tmp_path / "pairs.jsonl", n_queries=10)
    out = subprocess.run([sys.executable, "-m", "mm_rlhf_jax.data.split", "--pairs", str(tmp_path / "pairs.jsonl"),
                          "--out", str(tmp_path / "split"), "--heldout_fraction", "0.2", "--seed", "1"],
                         check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert printed["queries"] == {"train": 8, "heldout": 2}
    assert json.load(open(tmp_path / "split" / "split.json"))["seed"] == 1


def test_errors(tmp_path):
    _pairs_file(tmp_path / "pairs.jsonl", n_queries=3)
    with pytest.raises(ValueError, match=r"3 queries and heldout_fraction=0.1 give 0 held-out queries"):
        split_pairs(str(tmp_path / "pairs.jsonl"), str(tmp_path / "o"), heldout_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        split_pairs(str(tmp_path / "pairs.jsonl"), str(tmp_path / "o"), heldout_fraction=1.0, seed=0)
    lines = open(tmp_path / "pairs.jsonl").read().splitlines()
    bad = json.loads(lines[1])
    del bad["chosen"]
    (tmp_path / "bad.jsonl").write_text("\n".join([lines[0], json.dumps(bad)] + lines[2:]) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'chosen': missing required field"):
        split_pairs(str(tmp_path / "bad.jsonl"), str(tmp_path / "o"), heldout_fraction=0.5, seed=0)
