"""Runs as users start them: 2 local processes (2 x 4 CPU devices, launch/local_multiprocess.sh) write the
eval.json of 1 process x 8 devices (the same mesh), for every algorithm; SIGTERM to both processes, or SIGKILL
of a single process, mid-training, then the same command again, finishes with the uninterrupted figures.

The 1-process reference runs inside this pytest process (8 fake devices, tests/conftest.py) from the very
config the command line builds (tests/launch/micro.py), so it reuses the session's compilation cache; the
runs under test are fresh `python -m mm_rlhf_jax.main` processes.
"""

import json
import os
import signal
import urllib.parse

import numpy as np
import pytest

from mm_rlhf_jax.main import get_algorithm
from tests.launch import micro, runs

# MM-DPO in the default suite: the micro run with a smaller policy and no warm start (fewer, faster
# compiles in each process), and more steps between checkpoints, so a signal sent at the first one
# lands mid-training.
DPO = {"model.tiny.hidden_size": 32, "model.tiny.intermediate_size": 64, "model.tiny.num_layers": 1,
       "model.tiny.num_heads": 2, "model.tiny.num_kv_heads": 1, "model.tiny.vision_hidden_size": 32,
       "model.tiny.vision_intermediate_size": 64, "model.tiny.vision_num_layers": 1,
       "model.tiny.vision_num_heads": 2, "warm_start.steps": 0, "train.steps": 12, "train.checkpoint_every": 4}


def reference(algorithm: str, workdir: str, extra: dict | None = None) -> str:
    """The uninterrupted 1-process run, in this process; returns its workdir."""
    c = micro.config(algorithm, workdir, extra)
    get_algorithm(c.algorithm)(c, workdir)
    return workdir


def assert_same_training(workdir: str, expected: str) -> None:
    runs.assert_same_figures(runs.figures(workdir), runs.figures(expected))
    got, want = runs.train_losses(workdir), runs.train_losses(expected)
    assert sorted(got) == sorted(want) and want
    np.testing.assert_allclose([got[s] for s in sorted(want)], [want[s] for s in sorted(want)], rtol=1e-4)


@pytest.fixture(scope="module")
def dpo_reference(tmp_path_factory):
    return reference("mm_dpo", str(tmp_path_factory.mktemp("dpo_one") / "run"), DPO)


def test_two_processes_write_the_one_process_eval(dpo_reference, tmp_path):
    workdir = str(tmp_path / "run")
    runs.run(runs.command("mm_dpo", workdir, DPO, processes=2), str(tmp_path / "launcher.log"))
    assert_same_training(workdir, dpo_reference)
    # One reference cache, written once (by process 0), holding every train and held-out pair.
    (cache,) = os.listdir(os.path.join(workdir, "reference_cache"))
    with np.load(os.path.join(workdir, "reference_cache", cache, "logps.npz")) as z:
        with np.load(os.path.join(dpo_reference, "reference_cache", cache, "logps.npz")) as ref:
            assert z["keys"].tolist() == ref["keys"].tolist()
            np.testing.assert_allclose(z["logps"], ref["logps"], rtol=1e-5, atol=1e-5)


def test_sigkill_mid_training_then_the_same_command_finishes_like_an_uninterrupted_run(dpo_reference, tmp_path):
    workdir, log = str(tmp_path / "run"), str(tmp_path / "run.log")
    cmd = runs.command("mm_dpo", workdir, DPO)
    proc = runs.start(cmd, log)
    step = runs.wait_for_checkpoint(workdir, proc, log)
    assert runs.interrupt(proc, signal.SIGKILL, log) == -signal.SIGKILL
    assert step < DPO["train.steps"]
    runs.run(cmd, log)  # the same command again
    assert_same_training(workdir, dpo_reference)


@pytest.mark.slow
def test_sigterm_to_both_processes_then_the_same_command_resumes(dpo_reference, tmp_path):
    workdir, log = str(tmp_path / "run"), str(tmp_path / "launcher.log")
    cmd = runs.command("mm_dpo", workdir, DPO, processes=2)
    proc = runs.start(cmd, log)
    runs.wait_for_checkpoint(workdir, proc, log)
    # The launcher forwards SIGTERM to both processes; they agree on a step, checkpoint it and exit 143.
    assert runs.interrupt(proc, signal.SIGTERM, log) == 143, runs.tail(log)
    stopped = max(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
    assert stopped < DPO["train.steps"]
    runs.run(cmd, log)
    assert_same_training(workdir, dpo_reference)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["reward_model", "ppo", "align_pro", "longpo"])
def test_every_algorithm_as_two_processes_writes_the_one_process_eval(algorithm, tmp_path):
    one = reference(algorithm, str(tmp_path / "one"))
    two = str(tmp_path / "two")
    runs.run(runs.command(algorithm, two, processes=2), str(tmp_path / "launcher.log"), timeout=2400)
    runs.assert_same_figures(runs.figures(two), runs.figures(one))
    if algorithm == "reward_model":  # the score command's output: every pair's margin
        rows = lambda d: [json.loads(line) for line in open(os.path.join(d, "scored.jsonl"))]
        a, b = rows(two), rows(one)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose([r["delta"] for r in a], [r["delta"] for r in b], atol=1e-3)
        assert [r["chosen_generated_critique"] for r in a] == [r["chosen_generated_critique"] for r in b]
    if algorithm == "longpo":  # the self-generated pairs, written by process 0, are the 1-process ones
        for r in ("round_0", "round_1"):
            assert open(os.path.join(two, r, "data", "samples.jsonl")).read().replace(two, "") == \
                open(os.path.join(one, r, "data", "samples.jsonl")).read().replace(one, "")


def _files(root: str) -> set[str]:
    """Relative paths of a run's files, without what depends on the storage or the moment: orbax's GCS commit
    markers and per-process folders, tensorstore's content-named data files (d/<hash>), TensorBoard event
    file names (host and time), temporary files."""
    out = set()
    for folder, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), root)
            if name == "commit_success.txt" or name.startswith(".tmp") or "/ocdbt.process_" in f"/{rel}":
                continue
            if os.path.basename(folder) == "d":
                rel = os.path.join(os.path.dirname(rel), "<data>")
            out.add("tensorboard/<events>" if rel.startswith("tensorboard") else rel)
    return out


def test_gs_workdir_writes_every_file_through_the_path_layer(dpo_reference, tmp_path, monkeypatch):
    """The MM-DPO run on gs://: the path layer (fsspec), orbax's metadata (etils.epath) and its array data
    (tensorstore's GCS driver) all reach a local GCS stand-in (mm_rlhf_jax.testing.fake_gcs); nothing lands
    in the working folder, every file of the local run is in the bucket, and the figures are the local ones."""
    from mm_rlhf_jax.testing import fake_gcs

    bucket, cwd = tmp_path / "gcs", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a gs:// path that became local would land here (as ./gs:/...)
    monkeypatch.setenv("MM_RLHF_JAX_CACHE", str(tmp_path / "cache"))  # local copies of URL tokenizers
    with fake_gcs.serve(str(bucket)) as server:
        reference("mm_dpo", "gs://test-bucket/run", DPO)
    assert os.listdir(cwd) == []
    run = bucket / "test-bucket" / "run"
    # Every file of the local run, plus the completion markers of folders built on object stores.
    assert _files(str(run)) == _files(dpo_reference) | {"data/_BUILT", "tokenizer/_BUILT"}
    uploads = [p for m, p in server.requests if m == "POST"]
    assert any("checkpoints" in urllib.parse.unquote(p) for p in uploads)  # train state arrays via tensorstore
    assert os.listdir(tmp_path / "cache")  # the tokenizer was copied locally before transformers read it
    runs.assert_same_figures(runs.figures(str(run)), runs.figures(dpo_reference))
    assert runs.train_losses(str(run)) == pytest.approx(runs.train_losses(dpo_reference), rel=1e-5)
