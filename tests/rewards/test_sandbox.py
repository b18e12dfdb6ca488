"""Code sandbox: ordinary programs, statuses, reward hacks, code extraction."""

import json
import os
import threading
import types

import pytest

from mm_rlhf_jax.rewards import sandbox
from mm_rlhf_jax.rewards.sandbox import code_reward, extract_code, host, run_python

SOLUTION = "def add(a, b):\n    return a + b\n"


def test_passing_code(backend, assert_clean):
    result = run_python(SOLUTION + "print('hello')", "assert add(2, 3) == 5", backend=backend)
    assert result.status == "passed" and result.passed
    assert result.stdout == "hello\n"
    assert result.returncode == 0
    assert 0 < result.duration_s < 10
    assert {"session", "rlimits", "python_guard", "scrubbed_env"} <= set(result.layers)
    assert result.backend == backend and (("bwrap" in result.layers) == (backend == "bwrap"))
    assert_clean(result)


def test_failing_test_reports_failed(assert_clean):
    result = run_python(SOLUTION, "assert add(2, 2) == 5, 'two plus two'")
    assert result.status == "failed" and not result.passed
    assert "AssertionError: two plus two" in result.stderr
    assert_clean(result)


@pytest.mark.parametrize("code, tests, reason", [
    ("def add(a, b)\n    return a + b", "assert add(1, 1) == 2", "SyntaxError"),
    (SOLUTION, "assert add(1, 1) == 2 +", "SyntaxError"),
    ("raise ValueError('boom')", "pass", "ValueError in code"),
    (SOLUTION, "assert undefined_name(1)", "NameError in tests"),
    ("assert False, 'solution asserts at import'", "pass", "AssertionError in code"),
    ("x = input()", "pass", "EOFError in code"),  # stdin is empty
    ("import sys\nsys.exit(0)", "pass", "SystemExit before the tests finished"),
])
def test_errors(code, tests, reason, backend):
    result = run_python(code, tests, backend=backend)
    assert result.status == "error"
    assert reason in result.reason


def test_early_exit_or_forged_verdict_cannot_pass(backend):
    # os._exit(0) skips the tests; a verdict line written to the result pipe
    # without the host's nonce is ignored.
    forge = ("import marshal, os, sys\n"
             "fd = marshal.loads(bytes.fromhex(sys.argv[1]))['result_fd']\n"
             "os.write(fd, b'R 00000000000000000000000000000000 passed -\\n')\n"
             "os._exit(0)\n")
    for code in ("import os\nos._exit(0)", forge):
        result = run_python(code, "assert False", backend=backend)
        assert result.status == "error", (code, result)
        assert result.returncode == 0


def test_ordinary_programs_work(backend):
    code = (
        "import os, tempfile, multiprocessing, numpy as np\n"
        "open('data.txt', 'w').write('42')\n"
        "os.makedirs('sub/dir'); open('sub/dir/x', 'w').close()\n"
        "import shutil; shutil.rmtree('sub')\n"
        "with tempfile.NamedTemporaryFile('w') as f: f.write('x')\n"
        "with multiprocessing.Pool(2) as pool: squares = pool.map(abs, [-1, -2, -3])\n"
        "total = int(np.arange(10).sum())\n"
    )
    tests = ("assert open('data.txt').read() == '42'\n"
             "assert squares == [1, 2, 3] and total == 45\n")
    result = run_python(code, tests, timeout_s=20, backend=backend)
    assert result.status == "passed", result.stderr


def test_workdir_is_fresh_and_removed(backend):
    code = "import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.')))"
    first = run_python(code, "pass", backend=backend)
    second = run_python(code, "pass", backend=backend)
    dir1, listing1 = first.stdout.splitlines()
    dir2, _ = second.stdout.splitlines()
    assert listing1 == "[]" and dir1 != dir2
    assert not os.path.exists(dir1) and not os.path.exists(dir2)


def test_output_is_bounded():
    result = run_python("print('x' * 5000)", "pass", max_output_bytes=100)
    assert result.status == "passed"
    assert result.stdout == "x" * 100


def test_concurrent_runs_are_independent():
    results = [None] * 4

    def work(i):
        results[i] = run_python(f"value = {i}", f"assert value == {i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == ["passed"] * 4
    if results[0].uid is not None:
        assert len({r.uid for r in results}) == 4


@pytest.mark.parametrize("kwargs, match", [
    ({"code": 1, "tests": ""}, "code must be str"),
    ({"code": "", "tests": None}, "tests must be str"),
    ({"code": "", "tests": "", "timeout_s": 0}, "timeout_s"),
    ({"code": "", "tests": "", "timeout_s": float("nan")}, "timeout_s"),
    ({"code": "", "tests": "", "memory_mb": 8}, "memory_mb"),
    ({"code": "", "tests": "", "max_processes": 0}, "max_processes"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        run_python(**kwargs)


def _outcome(lines, supervisor_status=0, stderr=b""):
    return host.Outcome(lines=lines, supervisor_status=supervisor_status,
                                        stderr=stderr)


def test_classification_of_runner_exits():
    """Exit paths the live tests cannot force (the wall clock always fires
    first), checked on synthetic observations with wait statuses built by hand."""
    limits = {"cpu_s": 3, "memory_bytes": 256 << 20}
    sigxcpu, sigkill, sigsegv = 24, 9, 11
    cases = [
        (["S", f"X {sigxcpu} 3.010 9000"], "timeout"),
        (["S", f"X {sigkill} 4.000 9000"], "timeout"),
        (["S", f"X {sigkill} 0.500 {250 << 10}"], "memory"),
        (["S", f"X {sigsegv} 0.500 9000"], "error"),
        (["S", f"X {3 << 8} 0.100 9000"], "error"),  # exit code 3
        (["E refusing to run"], "error"),
        (["S", "R wrongnonce passed -", "X 0 0.1 9000"], "error"),
        (["S", "R abc passed -", "V os.kill 1", "X 0 0.1 9000"], "forbidden"),
        (["S", "R abc passed -", "X 0 0.1 9000"], "passed"),
    ]
    for lines, status in cases:
        got, _, _ = sandbox._classify(_outcome(lines), "abc", limits)
        assert got == status, (lines, got)
    got, _, code = sandbox._classify(_outcome(["S", f"X {sigsegv} 0.1 9000"],
                                              stderr=b"MemoryError"), "abc", limits)
    assert (got, code) == ("memory", -sigsegv)


@pytest.mark.parametrize("response, code", [
    ("Here:\n```python\nx = 1\n```\nand usage\n```python\nx = 2\n```", "x = 2\n"),
    ("```py\ny = 3\n```", "y = 3\n"),
    ("```\nz = 4\n```", "z = 4\n"),
    ("```bash\nls\n```\n```python\nw = 5\n```", "w = 5\n"),
    ("def f():\n    return 1", "def f():\n    return 1"),
    ("```bash\nrm -rf /\n```", None),
])
def test_extract_code(response, code):
    assert extract_code(response) == code


def test_code_reward():
    good = "Sure.\n```python\ndef square(x):\n    return x * x\n```"
    bad = "```python\ndef square(x):\n    return x + x\n```"
    tests = "assert square(3) == 9\nassert square(-2) == 4"
    assert code_reward(good, tests) == 1.0
    assert code_reward(bad, tests) == 0.0
    assert code_reward("```bash\necho hi\n```", tests) == 0.0


def test_isolation_layers_reported():
    layers = sandbox.isolation_layers()
    assert "python_guard" in layers and "rlimits" in layers
    print("isolation layers:", json.dumps(layers))
    if os.geteuid() == 0:
        # Root must never run untrusted code with RLIMIT_NPROC unenforced
        # unless the guard blocks fork (reported as missing nproc_enforced).
        assert ("uid_drop" in layers) == ("nproc_enforced" in layers)


def test_interrupted_host_leaves_nothing_behind(monkeypatch, backend, assert_clean):
    """If the host is interrupted mid-run (KeyboardInterrupt), execute() still
    kills the sandbox and reaps its first process."""
    seen = {}
    real_add = host._Streams.add

    def interrupting_add(streams, name, data):
        seen["session_id"], seen["uid"] = streams.outcome.session_id, streams.plan.uid
        real_add(streams, name, data)
        if streams.buffers["stdout"].count(b"born") == 8:  # all 8 processes run
            raise KeyboardInterrupt

    monkeypatch.setattr(host._Streams, "add", interrupting_add)
    code = ("import os, time\nfor _ in range(3):\n    os.fork()\n"
            "print('born', flush=True)\ntime.sleep(60)")
    with pytest.raises(KeyboardInterrupt):
        run_python(code, "pass", backend=backend)
    leftover = types.SimpleNamespace(session_id=seen["session_id"], uid=seen["uid"])
    assert_clean(leftover)
