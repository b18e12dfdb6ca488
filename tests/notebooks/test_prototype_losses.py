"""Executes notebooks/prototype_losses.ipynb in a fresh kernel and checks what it computed.

The kernel (the venv's `python3`) inherits this process's environment: 8 fake CPU
devices from tests/conftest.py and HF offline mode. The notebook's last cell
prints a JSON summary, read back here.
"""

import json
import math
import os

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "notebooks", "prototype_losses.ipynb")


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel imports mm_rlhf_jax from this checkout and draws inline (PNG outputs).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, kernel_name="python3", timeout=600,
                            resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}})
    client.execute(env=env)
    return nb


def test_notebook_runs_and_trains(executed):
    code = [c for c in executed.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    results = json.loads(_stdout(code[-1]).strip().splitlines()[-1])

    # The hand-written sigmoid DPO cell reproduced the library's dpo_loss.
    assert results["dpo_loss_check_max_diff"] < 1e-6
    runs = results["runs"]
    assert set(runs) == {"sigmoid DPO (built-in)", "exp loss"}
    steps = results["steps"]
    for name, h in runs.items():
        loss = np.asarray(h["loss"])
        assert loss.shape == (steps,) and np.all(np.isfinite(loss)), (name, loss)
        # Both losses start at their value for policy == reference (logits 0).
        expected0 = math.log(2.0) if name.startswith("sigmoid") else 1.0
        assert abs(loss[0] - expected0) < 1e-5, (name, loss[0])
        # Training on the fixed batches lowers the loss clearly.
        assert loss[-3:].mean() < 0.75 * loss[:3].mean(), (name, loss)
        assert h["accuracy"][-1] >= 0.75, (name, h["accuracy"])
        assert 0.0 <= h["heldout_accuracy"] <= 1.0
    # The two losses are different functions: different trajectories.
    assert not np.allclose(runs["exp loss"]["loss"], runs["sigmoid DPO (built-in)"]["loss"])


def test_notebook_plots_loss_curves(executed):
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 1
