"""Executes notebooks/ablations.ipynb on the micro ablation table's output (the ablation_micro fixture) in a
fresh kernel and checks that it read the report's figures and drew both plots."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "notebooks", "ablations.ipynb")


@pytest.fixture(scope="module")
def executed(ablation_micro, tmp_path_factory):
    root, proc, _ = ablation_micro
    assert proc.returncode == 0, proc.stderr[-4000:]
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="module://matplotlib_inline.backend_inline", ABLATE_DIR=root, ABLATE_TABLE="align_pro")
    client = NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}})
    client.execute(env=env)
    return nb, root


def test_notebook_reads_the_report_and_plots(executed):
    nb, root = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in code[-1].get("outputs", []) if o.get("output_type") == "stream")
    summary = json.loads(text.strip().splitlines()[-1])
    data = json.load(open(os.path.join(root, "align_pro.json")))
    assert summary["table"] == "align_pro"
    assert summary["means"] == {c: {m: st["mean"] for m, st in cell["metrics"].items()}
                                for c, cell in data["cells"].items()}
    assert [c["agrees"] for c in summary["comparisons"]] == [c["agrees"] for c in data["comparisons"]]
    assert [len(m) for m in summary["margins"]] == [1, 1]
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the cells' figure and the comparisons' margins
    assert any("text/markdown" in o.get("data", {}) for c in code for o in c.get("outputs", []))
