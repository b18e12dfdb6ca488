"""Hostile programs: each gets the right status and leaves the host unharmed.

Every test runs on each backend (`backend` fixture: bubblewrap where usable,
and the supervisor), with the Python guard (status "forbidden" where the
guard blocks) and, where the kernel layer exists on this machine, also
without it, to show the kernel layer holds on its own. After each run the
test checks the host: the outside file was not written, the server saw no
connection, the secret did not leak, and no sandbox process remains.
Escapes through /proc, ptrace and the kernel are in test_sandbox_escapes.py.

The fork bomb is bounded twice: the process limit is first verified with a
small experiment (50 forks under a limit of 10), and the bomb program itself
refuses to start without a process limit and caps its own tree.
"""

import os
import pathlib
import secrets
import signal
import socket
import sys
import time

import functools

import pytest

from mm_rlhf_jax.rewards.sandbox import isolation_layers, run_python as _run_python

PROJECT_DIR = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def run_python(backend):
    return functools.partial(_run_python, backend=backend)


def _last_error(result):
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture
def server():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    yield srv
    srv.close()


def _no_connection(srv):
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        return True
    conn.close()
    return False


NET_LOCAL = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
             "s.settimeout(2)\ns.connect(('127.0.0.1', {port}))\ns.sendall(b'pwned')")
NET_EXTERNAL = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "s.connect(('8.8.8.8', 53))\ns.send(b'pwned')")
NET_RESOLVE = "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)"


@pytest.mark.parametrize("template", [NET_LOCAL, NET_EXTERNAL, NET_RESOLVE])
def test_network_is_blocked_by_guard(template, server, run_python, assert_clean):
    result = run_python(template.format(port=server.getsockname()[1]), "pass")
    assert result.status == "forbidden", result
    assert any("socket" in v or "urllib" in v for v in result.violations), result.violations
    assert _no_connection(server)
    assert_clean(result)


@pytest.mark.parametrize("template", [NET_LOCAL, NET_EXTERNAL])
def test_network_namespace_without_guard(template, server, run_python, need_layer,
                                         assert_clean):
    need_layer("netns")
    result = run_python(template.format(port=server.getsockname()[1]), "pass", python_guard=False)
    assert result.status == "error"
    # seccomp refuses the socket itself; without it the namespace has no route
    expected = ("Address family not supported by protocol" if "seccomp" in result.layers
                else "Network is unreachable")
    assert expected in _last_error(result), result.stderr
    assert _no_connection(server)
    assert_clean(result)


def _in_sandbox_tree(target):
    """Whether the target's directory exists inside the minimal tree.

    /tmp is always there; the project directory is there as the (read-only)
    parent of the interpreter's prefix when the virtual environment lives
    inside the checkout, as in CI's clean clone.
    """
    parent = target.parent.resolve()
    prefixes = {pathlib.Path(p).resolve() for p in (sys.prefix, sys.base_prefix)}
    return parent == pathlib.Path("/tmp") or any(
        parent == p or parent in p.parents for p in prefixes)


def _outside_targets():
    tag = secrets.token_hex(6)
    return [pathlib.Path(f"/tmp/mm_rlhf_pwned_{tag}"), PROJECT_DIR / f"pwned_{tag}"]


@pytest.mark.parametrize("how", ["open", "symlink", "os_open"])
def test_writes_outside_workdir_blocked_by_guard(how, run_python, assert_clean):
    for target in _outside_targets():
        code = {
            "open": f"open({str(target)!r}, 'w').write('x')",
            "symlink": (f"import os\nos.symlink({str(target)!r}, 'link')\n"
                        "open('link', 'w').write('x')"),
            "os_open": f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)",
        }[how]
        result = run_python(code, "pass")
        assert result.status == "forbidden", result
        assert not target.exists()
        assert_clean(result)


def test_dir_fd_write_passes_guard_but_not_readonly_mount(backend, run_python, assert_clean):
    # The audit event for os.open carries no dir_fd, so the guard cannot see
    # where this write goes; the read-only mount (or the uid drop) must stop it.
    if not {"readonly_fs", "uid_drop"} & set(isolation_layers(backend)):
        pytest.skip("no kernel file-system layer here")
    name = f"mm_rlhf_pwned_{secrets.token_hex(6)}"
    code = (f"import os\nfd = os.open('/tmp', os.O_RDONLY)\n"
            f"os.open({name!r}, os.O_WRONLY | os.O_CREAT, dir_fd=fd)")
    result = run_python(code, "pass")
    assert result.status == "error"
    assert ("Read-only file system" in _last_error(result)
            or "Permission denied" in _last_error(result)), result.stderr
    assert not pathlib.Path("/tmp", name).exists()
    assert_clean(result)


def test_readonly_fs_without_guard(run_python, need_layer, assert_clean):
    need_layer("readonly_fs")
    for target in _outside_targets():
        result = run_python(f"open({str(target)!r}, 'w').write('x')", "pass", python_guard=False)
        assert result.status == "error"
        if "minimal_fs" in result.layers and not _in_sandbox_tree(target):
            assert "No such file or directory" in _last_error(result)  # not in the tree
        else:
            assert "Read-only file system" in _last_error(result)
        assert not target.exists()
        assert_clean(result)


def test_parent_environment_secret_does_not_leak(monkeypatch, backend, run_python,
                                                 assert_clean):
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("MM_RLHF_TEST_SECRET", secret)
    env_check = run_python("import os\nprint(sorted(os.environ))",
                           "assert 'MM_RLHF_TEST_SECRET' not in os.environ")
    assert env_check.status == "passed"
    assert secret not in env_check.stdout
    for guard in (True, False):
        if not guard and not {"hidden_proc", "private_proc", "uid_drop"} & set(
                isolation_layers(backend)):
            continue
        for target in ("os.getppid()", str(os.getpid())):
            code = f"import os\nprint(open('/proc/%d/environ' % {target}).read())"
            result = run_python(code, "pass", python_guard=guard)
            assert result.status == ("forbidden" if guard else "error"), result
            assert secret not in result.stdout and secret not in result.stderr
            assert_clean(result)


KILLS = [
    "os.kill(os.getppid(), signal.SIGKILL)",
    "os.kill({host}, signal.SIGKILL)",
    "os.killpg({host_group}, signal.SIGKILL)",
    "os.kill(-1, signal.SIGKILL)",
]


def _kill_code(statement):
    return "import os, signal\n" + statement.format(host=os.getpid(), host_group=os.getpgid(0))


@pytest.mark.parametrize("statement", KILLS)
def test_killing_the_parent_is_blocked_by_guard(statement, run_python, assert_clean):
    result = run_python(_kill_code(statement), "pass")
    assert result.status == "forbidden", result
    assert_clean(result)


@pytest.mark.parametrize("statement", KILLS[1:3])
def test_killing_the_host_fails_in_the_kernel_without_guard(statement, backend, run_python,
                                                            assert_clean):
    # The dropped uid may not signal the host (EPERM); in a pid namespace the
    # host's pid and group do not even exist (ESRCH).
    if not {"uid_drop", "pidns"} & set(isolation_layers(backend)):
        pytest.skip("no kernel layer protects the host from signals here")
    result = run_python(_kill_code(statement), "pass", python_guard=False)
    assert result.status == "error"
    assert ("Operation not permitted" in _last_error(result)
            or "No such process" in _last_error(result)), result.stderr
    assert_clean(result)  # and this test process is evidently alive


def test_infinite_loop_times_out(run_python, assert_clean):
    for code in ("while True:\n    pass",
                 "import time\ntime.sleep(60)",
                 "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\n"
                 "while True:\n    pass"):
        start = time.monotonic()
        result = run_python(code, "pass", timeout_s=1.0)
        assert result.status == "timeout", result
        assert result.returncode == -signal.SIGKILL
        assert time.monotonic() - start < 6
        assert_clean(result)


@pytest.mark.parametrize("code", [
    "x = bytearray(8 << 30)",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))",
    "s = 'x'\nwhile True:\n    s = s + s",
])
def test_memory_bomb(code, run_python, assert_clean):
    result = run_python(code, "pass", memory_mb=256)
    assert result.status == "memory", result
    assert_clean(result)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_cut_off(stream, run_python, assert_clean):
    code = f"import sys\nchunk = 'x' * 65536\nwhile True:\n    sys.{stream}.write(chunk)"
    start = time.monotonic()
    result = run_python(code, "pass", timeout_s=30, max_output_bytes=1000)
    assert result.status == "error" and "output limit" in result.reason
    assert len(getattr(result, stream)) == 1000
    assert time.monotonic() - start < 15  # killed at the output limit, not the clock
    assert_clean(result)


FORK_EXPERIMENT = """
import os, time
ok = failed = 0
for _ in range(50):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        time.sleep(1)
        os._exit(0)
    ok += 1
print(ok, failed)
"""


@pytest.fixture
def process_limit_verified(run_python):
    """A small self-limiting experiment: 50 forks under a limit of 10."""
    result = run_python(FORK_EXPERIMENT, "pass", max_processes=10)
    if "nproc_enforced" not in result.layers:
        pytest.skip("no kernel process limit here (the guard blocks fork instead)")
    assert result.status == "passed", result
    ok, failed = map(int, result.stdout.split())
    assert ok + failed == 50 and 1 <= ok <= 9, (ok, failed)
    return ok


FORK_BOMB = """
import os, resource, time
soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
# Second safety net: refuse to start without a small process limit, and cap
# the tree at 3 children per process and depth 6 (at most 1093 processes).
if not (0 < soft <= 64) or os.getuid() == 0:
    raise SystemExit('refusing to fork without a process limit')
depth, children = 0, 0
for attempt in range(2000):
    if children >= 3 or depth >= 6:
        break
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        depth, children = depth + 1, 0
        print('born', flush=True)
    else:
        children += 1
time.sleep(30)
"""


def test_fork_bomb_is_contained(process_limit_verified, run_python, assert_clean):
    start = time.monotonic()
    result = run_python(FORK_BOMB, "pass", timeout_s=2.0, max_processes=16)
    assert result.status == "timeout", result
    born = result.stdout.count("born")
    assert 1 <= born <= 15, born  # the runner itself is the 16th process
    assert time.monotonic() - start < 10
    assert_clean(result)


def test_escaped_session_is_still_killed(run_python, assert_clean):
    code = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(60)\n"
            "    os._exit(0)\n")
    result = run_python(code, "pass")
    assert result.status == "passed"
    assert_clean(result)


@pytest.mark.parametrize("code", [
    "import subprocess\nsubprocess.run(['id'])",
    "import os\nos.system('id')",
    "import sys\nsys.settrace(lambda *a: None)",
    "import ctypes\nctypes.CDLL(None).getpid()",
    "import os\ntry:\n    os.kill(os.getppid(), 9)\nexcept PermissionError:\n    pass",
])
def test_other_escapes_are_forbidden(code, run_python, assert_clean):
    result = run_python(code, "pass")
    assert result.status == "forbidden", result
    assert_clean(result)


def test_other_users_temporary_files_are_invisible(run_python, need_layer, assert_clean):
    # A world-readable file another job left in /tmp: the private /tmp hides
    # it (reads are not the guard's business: the file tree is readable).
    need_layer("private_tmp")
    secret = pathlib.Path(f"/tmp/mm_rlhf_other_job_{secrets.token_hex(6)}")
    secret.write_text("other job's data")
    secret.chmod(0o644)
    try:
        result = run_python(f"print(open({str(secret)!r}).read())", "pass")
        assert result.status == "error"
        assert "No such file or directory" in _last_error(result)
        assert "other job's data" not in result.stdout
        assert_clean(result)
    finally:
        secret.unlink()
