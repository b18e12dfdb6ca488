"""2 local CPU processes (4 devices each) under jax.distributed == the single-process forward; the placement
module's transfers across processes (fetch of sharded results, host slots, row gathers, broadcasts)."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import portpicker

from mm_rlhf_jax.testing.multihost import forward_inputs, tiny_decoder


def test_two_process_sharded_forward_matches_single_process(tmp_path):
    port = portpicker.pick_unused_port()
    out = tmp_path / "logits.npy"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the workers set their own device count
    worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    logs = [p.communicate(timeout=240)[0].decode() for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]

    model, ids = tiny_decoder(), forward_inputs()
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids)["params"])
    expected = np.asarray(model.apply({"params": params}, ids).logits)
    got = np.load(out)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max())
    for i in range(2):
        r = np.load(f"{out}.{i}.npz")
        np.testing.assert_allclose(r["fetched"], expected, atol=1e-5 * np.abs(expected).max())  # all-gathered
        # Mesh data 2 x fsdp 2 x tensor 2: process i's devices hold rows [4i, 4i + 4) of an 8-row batch.
        assert r["slot"].tolist() == [4, i, 2]
        assert r["gathered"].tolist() == [0, 1, 2, 3, 100, 101, 102, 103]
        assert r["primary"].tolist() == [0] and r["flags"].tolist() == [True, False] and bool(r["any"])
