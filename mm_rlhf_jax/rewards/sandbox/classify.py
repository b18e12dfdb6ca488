"""A run's status from the host's raw observations (`host.Outcome`).

The same for both backends: the runner's verdict counts only with the
host's nonce (which defeats early exits and printed fake verdicts), the
guard's violations make a run "forbidden" even if the program caught the
exception, and without a verdict the wall clock, the output limit and the
runner's wait status (signal, CPU seconds, max RSS) decide.
"""

import hmac
import os
import signal

RUNNER_STATUSES = ("passed", "failed", "error", "memory", "forbidden")


def verdict(lines, nonce):
    """The runner's first `R` line that carries the nonce, as (status, detail)."""
    for line in lines:
        parts = line.split(" ", 3)
        if (len(parts) >= 3 and parts[0] == "R" and parts[2] in RUNNER_STATUSES
                and hmac.compare_digest(parts[1].encode(), nonce.encode())):
            return parts[2], (parts[3] if len(parts) > 3 else "")
    return None


def runner_exit(lines):
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "X":
            try:
                return int(parts[1]), float(parts[2]), int(parts[3])
            except ValueError:
                continue
    return None


def _last_line(data):
    lines = data.decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:300] if lines else ""


def classify(outcome, nonce, limits, startup_timeout_s):
    """(status, reason, returncode) from the raw observations."""
    errors = [line[2:] for line in outcome.lines if line.startswith("E ")]
    violations = [line[2:] for line in outcome.lines if line.startswith("V ")]
    found = verdict(outcome.lines, nonce)
    runner = runner_exit(outcome.lines)
    returncode = (os.waitstatus_to_exitcode(runner[0]) if runner is not None
                  else outcome.supervisor_status)
    if errors and found is None:
        return "error", "sandbox setup failed: " + errors[0], returncode
    if outcome.startup_timed_out:
        return "error", f"sandbox did not start within {startup_timeout_s:.0f}s", returncode
    if violations or (found is not None and found[0] == "forbidden"):
        first = violations[0] if violations else found[1]
        return "forbidden", "blocked: " + first, returncode
    if found is not None:
        return found[0], "" if found[1] == "-" else found[1], returncode
    if outcome.timed_out:
        return "timeout", "wall-clock limit exceeded", returncode
    if outcome.output_exceeded:
        return "error", "output limit exceeded", returncode
    if runner is None:
        if not outcome.started and outcome.stderr:
            # Only trusted code (bwrap, the runner's start) ran before "S".
            return "error", "sandbox setup failed: " + _last_line(outcome.stderr), returncode
        return "error", "the sandbox ended without a result", returncode
    sig = -returncode if returncode is not None and returncode < 0 else None
    cpu_s, max_rss_kib = runner[1], runner[2]
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_s >= limits["cpu_s"] - 0.05):
        return "timeout", f"CPU time limit ({cpu_s:.1f}s)", returncode
    near_limit = max_rss_kib * 1024 >= 0.9 * limits["memory_bytes"]
    if sig is not None and (near_limit or b"MemoryError" in outcome.stderr):
        return "memory", f"killed by signal {sig} near the memory limit", returncode
    if sig == signal.SIGXFSZ:
        return "error", "file size limit exceeded", returncode
    return "error", f"exited with code {returncode} before the tests finished", returncode
