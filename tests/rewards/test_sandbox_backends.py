"""Backend choice, the fallback, the batched entry points, the uid lease."""

import os

import pytest

from mm_rlhf_jax.rewards import sandbox
from mm_rlhf_jax.rewards.sandbox import (backends, bwrap, code_rewards, ids, run_python,
                                         run_python_batch, sweep)

BATCH = [
    ("def f(x):\n    return x + 1", "assert f(1) == 2"),
    ("def f(x):\n    return x", "assert f(1) == 2"),
    ("raise ValueError('boom')", "pass"),
    ("import time\ntime.sleep(30)", "pass"),
    ("open('/etc/passwd', 'a')", "pass"),
    ("x = [1] * 3", "assert x == [1, 1, 1]"),
]
STATUSES = ["passed", "failed", "error", "timeout", "forbidden", "passed"]


def test_bwrap_is_used_where_installed():
    # Where bwrap is installed and the own code can build namespaces, bwrap
    # must work too (same kernel permissions): a broken install must not
    # fall back unnoticed on CI.
    path, _ = bwrap.find()
    if path is None:
        pytest.skip("bwrap is not installed (or too old)")
    if "mountns" not in sandbox.isolation_layers("supervisor"):
        pytest.skip("no namespaces here at all")
    usable, reason = sandbox.bwrap_status()
    assert usable, reason
    result = run_python("pass", "pass")
    assert result.backend == "bwrap" and "bwrap" in result.layers
    assert {"seccomp", "pidns", "netns", "mountns", "readonly_fs", "no_caps"} <= set(result.layers)


def test_fallback_is_chosen_and_reported(monkeypatch):
    monkeypatch.setattr(backends, "bwrap_status", lambda: (False, "pretend it is missing"))
    result = run_python("pass", "pass")
    assert result.status == "passed" and result.backend == "supervisor"
    assert "bwrap" not in result.layers and "seccomp" not in result.layers
    with pytest.raises(RuntimeError, match="pretend it is missing"):
        run_python("pass", "pass", backend="bwrap")


@pytest.mark.parametrize("kwargs, error", [
    ({"backend": "docker"}, ValueError),
    ({"backend": "bwrap", "namespaces": False}, ValueError),
])
def test_bad_backend_arguments(kwargs, error):
    with pytest.raises(error):
        run_python("pass", "pass", **kwargs)


def test_no_namespaces_means_supervisor():
    assert run_python("pass", "pass", namespaces=False).backend == "supervisor"


def test_batch_matches_single_runs(assert_clean):
    results = run_python_batch(BATCH, workers=2, timeout_s=1.0)
    assert [r.status for r in results] == STATUSES
    singles = [run_python(code, tests, timeout_s=1.0) for code, tests in BATCH]
    assert [(r.status, r.reason, r.backend, r.layers) for r in results] == [
        (r.status, r.reason, r.backend, r.layers) for r in singles]
    for result in results:
        assert_clean(result)


def test_batch_checks_arguments_before_running(monkeypatch):
    ran = []
    monkeypatch.setattr(sandbox, "run_python", lambda *a, **k: ran.append(a))
    with pytest.raises(TypeError, match="tests must be str"):
        run_python_batch([("pass", "pass"), ("pass", None)])
    with pytest.raises(ValueError, match="workers"):
        run_python_batch([("pass", "pass")], workers=0)
    with pytest.raises(ValueError, match="pairs"):
        run_python_batch([("pass",)])
    with pytest.raises(ValueError, match="timeout_s"):
        run_python_batch([("pass", "pass")], timeout_s=-1)
    assert ran == [] and run_python_batch([]) == []


def test_code_rewards():
    good = "```python\ndef sq(x):\n    return x * x\n```"
    bad = "```python\ndef sq(x):\n    return x + x\n```"
    tests = "assert sq(3) == 9"
    assert code_rewards([good, bad, "```bash\nls\n```", good], [tests] * 4,
                        workers=2) == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError):
        code_rewards([good], [])


@pytest.mark.skipif(os.geteuid() != 0, reason="uid leases exist only as root")
def test_clean_lease_skips_the_sweep(monkeypatch, backend):
    """A slot left "clean" (bwrap proved its processes gone) is not swept
    again; after a supervisor run, or a crash, it is."""
    swept = []
    real = sweep.kill_sandbox
    monkeypatch.setattr(sweep, "kill_sandbox",
                        lambda *a, **k: swept.append(k.get("uid")) or real(*a, **k))
    with ids.lease() as first:
        first.clean = True
    swept.clear()  # whatever state earlier tests left this slot in
    with ids.lease() as second:  # the lowest free slot: the same one
        assert second.uid == first.uid
        second.clean = False     # e.g. the holder crashed
    assert swept == []
    with ids.lease() as third:
        assert third.uid == first.uid
    assert swept == [third.uid]  # only after the unclean holder
    result = run_python("pass", "pass", backend=backend)
    swept.clear()
    again = run_python("pass", "pass", backend=backend)
    assert again.uid == result.uid
    assert swept == ([] if backend == "bwrap" else [result.uid])
