"""One real micro table through the CLI subprocess path (the ablation_micro fixture, tests/conftest.py):
its report holds the figures of the cell's own eval.json, and a rerun starts no training."""

import json
import os
import subprocess
import sys

from mm_rlhf_jax.ablate import run
from mm_rlhf_jax.ablate.tables import TABLES


def test_micro_table_report_has_the_cells_real_figures(ablation_micro):
    root, proc, wall_s = ablation_micro
    assert proc.returncode == 0, proc.stderr[-4000:]
    for ext in ("md", "json", "png"):
        assert os.path.getsize(os.path.join(root, f"align_pro.{ext}")) > 0
    evals = json.load(open(os.path.join(root, "align_pro", "align_pro", "seed_0", "eval.json")))
    data = json.load(open(os.path.join(root, "align_pro.json")))
    md = open(os.path.join(root, "align_pro.md")).read()
    for metric in TABLES.get("align_pro").metrics:
        st = data["cells"]["align_pro"]["metrics"][metric]
        assert st["values"] == {"0": evals[metric]} and st["mean"] == evals[metric], metric
        assert f"| align_pro | {metric} | {evals[metric]:.3f} ± 0.000 (n=1) | s0: {evals[metric]:.3f} |" in md
    assert [c["seeds_compared"] for c in data["comparisons"]] == [1, 1]
    assert data["run"]["status"] == {"align_pro/seed_0": "done"}
    print(f"micro align_pro table: {wall_s:.0f} s")


def test_rerun_skips_the_finished_seed(ablation_micro):
    root, proc, _ = ablation_micro
    assert proc.returncode == 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (run.REPO, os.environ.get("PYTHONPATH")) if p))
    again = subprocess.run([sys.executable, "-m", "mm_rlhf_jax.ablate", "align_pro", "--seeds", "1", "--workdir", root],
                           capture_output=True, text=True, timeout=120, env=env, cwd=run.REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "eval.json exists, not rerun" in again.stderr
