"""Code sandbox latency and throughput; prints one JSON object.

  python bench/sandbox.py [--runs 100 --batch 200 --workers 2 --backend both]
                          [--cpu-cgroup]

Programs: short pure-Python solutions with 2-4 asserts each (the shape of
MBPP/HumanEval-style code rewards), one in four failing its tests.

1. latency: `run_python` called --runs times in a row by one caller (after 5
   warm-up runs); median / p90 / max milliseconds per program, host call to
   result.
2. throughput: `run_python_batch` over --batch programs with --workers
   threads; programs per second of wall time, and the fraction of the
   machine's CPU time that was busy meanwhile (anyone's: on a shared
   machine other jobs compete for the same cores).
3. with --cpu-cgroup (root, cgroup v2): CPU milliseconds per program of this
   process and every sandbox process, from the cpu.stat of a cgroup the
   benchmark moves itself into for the run (rusage cannot count them:
   bwrap's pid 1 is re-parented away from the host). Kernel work done in
   kernel threads, such as freeing network namespaces, is not counted.
Targets (issue #15): median <= 50 ms and >= 40 programs/s on 2 cores.
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from mm_rlhf_jax.rewards import sandbox

PROGRAMS = [
    ("def add(a, b):\n    return a + b\n",
     "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"),
    ("def is_palindrome(s):\n    s = ''.join(c.lower() for c in s if c.isalnum())\n"
     "    return s == s[::-1]\n",
     "assert is_palindrome('A man, a plan, a canal: Panama')\nassert not is_palindrome('ab')\n"),
    ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
     "assert fib(10) == 55\nassert fib(1) == 1\nassert fib(30) == 832040\n"),
    ("def unique_sorted(xs):\n    return sorted(xs)\n",  # wrong: keeps duplicates
     "assert unique_sorted([3, 1, 3, 2]) == [1, 2, 3]\n"),
    ("import collections\ndef most_common(words):\n"
     "    return collections.Counter(words).most_common(1)[0][0]\n",
     "assert most_common(['a', 'b', 'a']) == 'a'\nassert most_common(['x']) == 'x'\n"),
    ("def primes(n):\n    sieve = [True] * (n + 1)\n    out = []\n"
     "    for i in range(2, n + 1):\n        if sieve[i]:\n            out.append(i)\n"
     "            for j in range(i * i, n + 1, i):\n                sieve[j] = False\n"
     "    return out\n",
     "assert primes(10) == [2, 3, 5, 7]\nassert len(primes(1000)) == 168\n"),
    ("def rev_words(s):\n    return ' '.join(s.split()[::-1])\n",
     "assert rev_words('a b c') == 'c b a'\nassert rev_words('') == ''\n"),
    ("def gcd(a, b):\n    return min(a, b)\n",  # wrong
     "assert gcd(12, 18) == 6\nassert gcd(7, 3) == 1\n"),
]


def _busy():
    """(busy, total) CPU ticks of the whole machine."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


class CpuCgroup:
    """This process in a fresh cgroup v2 child for the duration (root only)."""

    def __init__(self):
        mounts = [line.split() for line in open("/proc/mounts")]
        roots = [m[1] for m in mounts if m[2] == "cgroup2"]
        if os.geteuid() != 0 or not roots:
            raise OSError("needs root and a cgroup v2 mount")
        self.parent = roots[0]
        self.path = os.path.join(self.parent, "mm_rlhf_sandbox_bench_%d" % os.getpid())

    def __enter__(self):
        os.mkdir(self.path)
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        return self

    def usage_ms(self):
        with open(os.path.join(self.path, "cpu.stat")) as f:
            return int(dict(line.split() for line in f)["usage_usec"]) / 1000

    def __exit__(self, *exc):
        with open(os.path.join(self.parent, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        for _ in range(50):  # killed sandboxes leave the cgroup within moments
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


def _expected(code, tests):
    namespace = {}
    try:
        exec(code, namespace)  # trusted benchmark programs, to check the results
        exec(tests, namespace)
        return "passed"
    except AssertionError:
        return "failed"


def latency(backend, runs):
    for code, tests in PROGRAMS[:5]:
        sandbox.run_python(code, tests, backend=backend)
    times, statuses = [], []
    for i in range(runs):
        code, tests = PROGRAMS[i % len(PROGRAMS)]
        t0 = time.perf_counter()
        result = sandbox.run_python(code, tests, backend=backend)
        times.append((time.perf_counter() - t0) * 1000)
        statuses.append(result.status == _expected(code, tests))
    assert all(statuses), "a benchmark program got the wrong status"
    times.sort()
    return {"runs": runs, "median_ms": round(statistics.median(times), 1),
            "p90_ms": round(times[int(0.9 * (runs - 1))], 1), "max_ms": round(times[-1], 1),
            "min_ms": round(times[0], 1)}


def throughput(backend, batch, workers, cgroup):
    items = [PROGRAMS[i % len(PROGRAMS)] for i in range(batch)]
    busy0, cpu0, t0 = _busy(), cgroup and cgroup.usage_ms(), time.perf_counter()
    results = sandbox.run_python_batch(items, workers=workers, backend=backend)
    wall, busy1 = time.perf_counter() - t0, _busy()
    assert [r.status for r in results] == [_expected(*item) for item in items]
    out = {"programs": batch, "workers": workers, "wall_s": round(wall, 2),
           "programs_per_s": round(batch / wall, 1),
           "machine_busy_fraction": round((busy1[0] - busy0[0]) / (busy1[1] - busy0[1]), 2)}
    if cgroup:
        out["cpu_ms_per_program"] = round((cgroup.usage_ms() - cpu0) / batch, 1)
    return out


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _bwrap_version():
    try:
        return subprocess.run(["bwrap", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", choices=("both", "bwrap", "supervisor"), default="both")
    ap.add_argument("--cpu-cgroup", action="store_true")
    args = ap.parse_args()
    cgroup = CpuCgroup() if args.cpu_cgroup else None
    with cgroup or contextlib.nullcontext():
        out = run(args, cgroup)
    print(json.dumps(out, indent=1))


def run(args, cgroup):
    chosen = ["bwrap", "supervisor"] if args.backend == "both" else [args.backend]
    out = {"commit": _commit(), "machine": _cpu_model(), "cpus": os.cpu_count(),
           "kernel": platform.release(),
           "python": sys.version.split()[0], "bwrap": _bwrap_version(),
           "bwrap_status": sandbox.bwrap_status()[1], "load_avg_before": os.getloadavg(),
           "backends": {}}
    for backend in chosen:
        if backend == "bwrap" and not sandbox.bwrap_status()[0]:
            out["backends"][backend] = {"skipped": sandbox.bwrap_status()[1]}
            continue
        lat = latency(backend, args.runs)
        thr = throughput(backend, args.batch, args.workers, cgroup)
        out["backends"][backend] = {
            "layers": list(sandbox.isolation_layers(backend)), "latency": lat,
            "throughput": thr,
            "targets": {"median_le_50ms": lat["median_ms"] <= 50,
                        "programs_per_s_ge_40": thr["programs_per_s"] >= 40}}
    out["load_avg_after"] = os.getloadavg()
    return out


if __name__ == "__main__":
    main()
