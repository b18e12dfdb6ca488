"""2 local CPU processes (4 devices each) under jax.distributed == the single-process forward."""

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
