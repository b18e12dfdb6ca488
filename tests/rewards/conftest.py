"""Helpers for the sandbox tests: an independent /proc scan for leftovers."""

import os

import pytest


def processes_of(session_id, uid):
    """Every process (zombies included) in `session_id` or owned by `uid`.

    Written independently of sandbox_host's sweep, from /proc/<pid>/stat
    (field 6 is the session) and the real uid in /proc/<pid>/status."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/status") as f:
                status = f.read()
        except OSError:
            continue
        session = int(stat[stat.rfind(")") + 2:].split()[3])
        real_uid = int(next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1])
        if session == session_id or (uid is not None and real_uid == uid):
            found.append((int(name), stat[stat.rfind(")") + 2]))
    return found


@pytest.fixture
def assert_clean():
    """Call with a SandboxResult: no process of that sandbox may remain."""
    def check(result):
        assert result.session_id > 0
        leftovers = processes_of(result.session_id, result.uid)
        assert leftovers == [], f"sandbox processes left behind: {leftovers}"
    return check


@pytest.fixture(params=["bwrap", "supervisor"])
def backend(request):
    """Each sandbox backend; bwrap is skipped (with the reason) where unusable."""
    from mm_rlhf_jax.rewards.sandbox import bwrap_status
    if request.param == "bwrap":
        usable, reason = bwrap_status()
        if not usable:
            pytest.skip(f"bwrap backend unusable here: {reason}")
    return request.param


@pytest.fixture
def need_layer(backend):
    """Call with a layer name: skip unless `backend` provides it here."""
    from mm_rlhf_jax.rewards.sandbox import isolation_layers

    def check(*layers):
        missing = set(layers) - set(isolation_layers(backend))
        if missing:
            pytest.skip(f"{backend}: layer(s) {sorted(missing)} not available here")
    return check
