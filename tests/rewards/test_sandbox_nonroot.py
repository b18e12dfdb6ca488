"""The sandbox started by an unprivileged user (as a non-root CI would).

Runs a small driver as uid/gid 65534 (nobody) with the system interpreter
(the project venv's interpreter may live under a directory closed to other
users), once per backend. Expected: user + network + mount namespaces when
the kernel allows unprivileged user namespaces, otherwise the fallback
layers (bwrap then needs the user namespace and is skipped); in every case
a working process limit and the guard.
"""

import json
import os
import pathlib
import shutil
import stat
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")

DRIVER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
from mm_rlhf_jax.rewards.sandbox import bwrap_status, run_python
backend = sys.argv[3]
if backend == "bwrap" and not bwrap_status()[0]:
    print(json.dumps({"skip": bwrap_status()[1]}))
    sys.exit(0)

def run(code, tests="pass", **kw):
    r = run_python(code, tests, backend=backend, **kw)
    return {"status": r.status, "stdout": r.stdout, "stderr": r.stderr[-300:],
            "layers": list(r.layers), "uid": r.uid}

fork = '''
import os, time
ok = 0
for _ in range(40):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        time.sleep(1)
        os._exit(0)
    ok += 1
print(ok)
'''
out = {
    "uid": os.getuid(),
    "basic": run("def f(x):\n    return x * 2", "assert f(3) == 6"),
    "fork": run(fork, max_processes=8),
    "kill_parent": run("import os\nos.kill(os.getppid(), 9)"),
    "net_unguarded": run("import socket\nsocket.socket().connect(('127.0.0.1', 9))",
                         python_guard=False),
}
target = sys.argv[2]
out["write_guarded"] = run(f"open({target!r}, 'w').write('x')")
out["written_guarded"] = os.path.exists(target)
out["write_unguarded"] = run(f"open({target!r}, 'w').write('x')", python_guard=False)
out["written_unguarded"] = os.path.exists(target)
if os.path.exists(target):
    os.remove(target)
print(json.dumps(out))
"""


def _world_readable(path):
    for parent in [path, *path.parents]:
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as nobody")
@pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no system python3 for the nobody user")
@pytest.mark.parametrize("backend", ["bwrap", "supervisor"])
def test_sandbox_as_unprivileged_user(backend):
    if not (_world_readable(REPO) and _world_readable(pathlib.Path(SYSTEM_PYTHON).resolve())):
        pytest.skip("the repository or the system python is not readable by nobody")
    check = "import sys; print(sys.version_info >= (3, 10))"
    version = subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True, text=True,
                             check=True).stdout.strip()
    if version != "True":
        pytest.skip("system python3 is older than 3.10")
    target = f"/tmp/mm_rlhf_nonroot_pwned_{os.getpid()}"
    proc = subprocess.run([SYSTEM_PYTHON, "-I", "-c", DRIVER, str(REPO), target, backend],
                          user=65534,
                          group=65534, extra_groups=[], capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    if "skip" in out:
        pytest.skip(f"bwrap unusable for an unprivileged user here: {out['skip']}")
    assert out["uid"] == 65534
    basic = out["basic"]
    assert basic["status"] == "passed" and basic["uid"] is None
    layers = set(basic["layers"])
    assert "uid_drop" not in layers
    assert {"nproc_enforced", "python_guard", "rlimits", "subreaper"} <= layers
    print("non-root layers:", sorted(layers))
    assert ("bwrap" in layers) == (backend == "bwrap")
    # process limit binds: 8 beyond the sandbox's own processes, of which the
    # program's first one counts too (supervisor: also supervisor and runner)
    assert out["fork"]["status"] == "passed"
    assert 1 <= int(out["fork"]["stdout"]) <= 7
    assert out["kill_parent"]["status"] == "forbidden"
    assert out["write_guarded"]["status"] == "forbidden"
    assert not out["written_guarded"]
    if {"userns", "netns", "readonly_fs"} <= layers:
        assert out["write_unguarded"]["status"] == "error"
        assert "Read-only file system" in out["write_unguarded"]["stderr"]
        assert not out["written_unguarded"]
        assert out["net_unguarded"]["status"] == "error"
        assert ("Address family not supported" if "seccomp" in layers
                else "Network is unreachable") in out["net_unguarded"]["stderr"]
    # Without user namespaces only the guard stands between the program and
    # the world-writable /tmp, so the unguarded write may land (the driver
    # removed it); python_guard=False exists to test the kernel layers.
    assert not os.path.exists(target)
