"""Aggregation and direction verdicts on hand-made eval.json files, and the files the report writes.

Hand values (metric m, seeds 0, 1, 2):
  cell "up":   0.5, 0.7, 0.9  -> mean 0.7, sample std 0.2
  cell "flat": 0.6, 0.6, 0.6  -> mean 0.6, std 0
  "up:m > flat:m"  (paper direction) -> our means agree; holds in seeds 1 and 2: 2 of 3
  "up:m < flat:m"  (a paper claiming the opposite) -> disagrees; holds in seed 0 only: 1 of 3
  metric g: "up" lacks it in seed 2 and holds a bool in seed 1, so only seed 0 counts (n = 1, std 0).
"""

import json
import os

import pytest

from mm_rlhf_jax.ablate import aggregate, report, run
from mm_rlhf_jax.ablate.spec import Cell, PaperValue, Table, compare

TABLE = Table(
    name="hand", title="Hand-made table", algorithm="mm_dpo", preset="tiny", paper_preset="llava_ov_7b",
    topology="v5p:2x2x1", metrics=("m", "g"),
    cells=(Cell("up", {"dpo.beta_mode": "paper"}, paper={"m": PaperValue(0.85, "Paper Table 9 [P]")}),
           Cell("flat", {"dpo.beta_mode": "constant"}, paper={"m": PaperValue(0.75, "Paper Table 9 [P]")})),
    comparisons=(compare("up:m", ">", "flat:m", "Paper Table 9 [P]"),
                 compare("up:m", "<", "flat:m", "a paper claiming the opposite"),
                 compare("up:g", ">=", "flat:g", "ties agree")),
    notes=("a note",))

EVALS = {"up": [{"m": 0.5, "g": 0.25}, {"m": 0.7, "g": True}, {"m": 0.9}],
         "flat": [{"m": 0.6, "g": 0.25}, {"m": 0.6, "g": 0.5}, {"m": 0.6, "g": 0.5}]}


@pytest.fixture
def data(tmp_path):
    jobs = run.plan(TABLE, cells=None, seeds=[0, 1, 2], root=str(tmp_path))
    for job in jobs:
        os.makedirs(job.workdir)
        with open(job.eval_path, "w") as f:
            json.dump({**EVALS[job.cell][job.seed], "examples": [{"text": "not a figure"}]}, f)
    return aggregate.aggregate(TABLE, run.read_evals(jobs))


def test_means_std_and_per_seed_values(data):
    up, flat = data["cells"]["up"]["metrics"]["m"], data["cells"]["flat"]["metrics"]["m"]
    assert up["values"] == {"0": 0.5, "1": 0.7, "2": 0.9} and up["n"] == 3
    assert up["mean"] == pytest.approx(0.7) and up["std"] == pytest.approx(0.2)
    assert flat["mean"] == pytest.approx(0.6) and flat["std"] == pytest.approx(0.0)
    assert up["paper"] == {"value": 0.85, "source": "Paper Table 9 [P]"}
    g = data["cells"]["up"]["metrics"]["g"]
    assert g["values"] == {"0": 0.25} and g["n"] == 1 and g["std"] == 0.0 and g["paper"] is None


def test_direction_verdicts(data):
    agree, disagree, tie = data["comparisons"]
    assert agree["agrees"] is True and (agree["seeds_agree"], agree["seeds_compared"]) == (2, 3)
    assert agree["seeds_holding"] == ["1", "2"] and (agree["paper_a"], agree["paper_b"]) == (0.85, 0.75)
    assert disagree["agrees"] is False and (disagree["seeds_agree"], disagree["seeds_compared"]) == (1, 3)
    # g: up has seed 0 only (0.25), flat mean 5/12; the one shared seed is a tie, which >= accepts
    assert tie["agrees"] is False and (tie["seeds_agree"], tie["seeds_compared"]) == (1, 1)


def test_report_files(data, tmp_path):
    out = str(tmp_path / "reports")
    paths = report.write(data, out)
    assert paths == {e: os.path.join(out, f"hand.{e}") for e in ("md", "json", "png")}
    md = open(paths["md"]).read()
    assert "| up | m | 0.700 ± 0.200 (n=3) | s0: 0.500, s1: 0.700, s2: 0.900 | 0.85 (Paper Table 9 [P]) |" in md
    assert "| `up:m > flat:m` | Paper Table 9 [P] | 0.85 vs 0.75 | 0.700 vs 0.600 | yes | 2 of 3 |" in md
    assert "| `up:m < flat:m` | a paper claiming the opposite | 0.85 vs 0.75 | 0.700 vs 0.600 | **no** | 1 of 3 |" in md
    assert "- a note" in md and "`dpo.beta_mode=paper`" in md
    assert report.load(paths["json"]) == json.loads(json.dumps(data))
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_cell_subset_leaves_out_comparisons_it_cannot_make(tmp_path):
    jobs = run.plan(TABLE, cells=["up"], seeds=[0], root=str(tmp_path))
    data = aggregate.aggregate(TABLE, run.read_evals(jobs))
    assert list(data["cells"]) == ["up"] and data["comparisons"] == []
    assert data["cells"]["up"]["metrics"]["m"]["mean"] is None  # no eval.json yet
    report.markdown(data)  # renders the empty cell as "-"
