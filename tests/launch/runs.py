"""Running `main` the way users do (one process, or N through launch/local_multiprocess.sh) and reading results."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np

from tests.launch import micro

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEVICES = 8  # one process x 8 CPU devices, or n processes x 8 / n: the same mesh


def env() -> dict:
    out = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # --cpu_devices sets the device count
    out.update(PYTHONPATH=ROOT + os.pathsep + out.get("PYTHONPATH", ""), PYTHON=sys.executable,
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return out


def config_arg(algorithm: str) -> str:
    return f"configs/{algorithm}.py:{micro.preset(algorithm)}"


def command(algorithm: str, workdir: str, extra: dict | None = None, *, processes: int = 1) -> list[str]:
    """The command line of a micro run (+ extra overrides): `main` itself for one process, the launcher for
    several."""
    flags = [*micro.flags(algorithm, workdir, extra), "--cpu_devices", str(DEVICES // processes)]
    if processes == 1:
        return [sys.executable, "-m", "mm_rlhf_jax.main", "--config", config_arg(algorithm), "--workdir", workdir,
                *flags]
    return ["bash", os.path.join(ROOT, "launch", "local_multiprocess.sh"), str(processes), config_arg(algorithm),
            workdir, *flags]


def start(cmd: list[str], log: str) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT)


def tail(log: str, n: int = 6000) -> str:
    text = open(log, errors="replace").read()
    for other in sorted(p for p in os.listdir(os.path.dirname(log)) if ".process" in p):  # the launcher's logs
        text += f"\n--- {other}\n" + open(os.path.join(os.path.dirname(log), other), errors="replace").read()[-n:]
    return text[-3 * n:]


def run(cmd: list[str], log: str, timeout: float = 1200) -> None:
    p = start(cmd, log)
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{tail(log)}") from None
    assert rc == 0, f"exit status {rc}: {' '.join(cmd)}\n{tail(log)}"


def wait_for_checkpoint(workdir: str, proc: subprocess.Popen, log: str, *, phase: str = "",
                        timeout: float = 1200) -> int:
    """Polls until the phase's first complete orbax step folder appears (orbax renames a step into place, or
    on object stores commits it, only once complete); returns its step."""
    folder = os.path.join(workdir, phase, "checkpoints")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [int(n) for n in (os.listdir(folder) if os.path.isdir(folder) else []) if n.isdigit()]
        if steps:
            return min(steps)
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before its first checkpoint\n{tail(log)}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no checkpoint in {folder} after {timeout}s\n{tail(log)}")


def interrupt(proc: subprocess.Popen, sig: int, log: str, timeout: float = 600) -> int:
    os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"did not exit within {timeout}s of signal {signal.Signals(sig).name}\n{tail(log)}")


def _flat(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    if isinstance(obj, list):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}{i}/"))
        return out
    return {prefix.rstrip("/"): obj}


def figures(workdir: str, name: str = "eval.json") -> dict:
    """eval.json flattened to {key/path: value}, without file paths (they name the run's own workdir)."""
    flat = _flat(json.load(open(os.path.join(workdir, name))))
    return {k: v for k, v in flat.items() if not (isinstance(v, str) and (v.startswith("/") or "://" in v))}


def assert_same_figures(got: dict, expected: dict, atol: float = 1e-3) -> None:
    assert sorted(got) == sorted(expected), (sorted(set(got) ^ set(expected)))
    numeric = 0
    for k, v in expected.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            assert got[k] == v, (k, got[k], v)
        elif math.isnan(v):
            assert math.isnan(got[k]), (k, got[k])
        else:
            np.testing.assert_allclose(got[k], v, atol=atol, rtol=0, err_msg=k)
            numeric += 1
    assert numeric >= 2, f"only {numeric} numeric figures to compare: {expected}"


def train_losses(workdir: str, phase: str = "") -> dict[int, float]:
    """step -> train/loss of a phase's metrics.jsonl (a resumed run's repeated steps: the last row)."""
    rows = [json.loads(line) for line in open(os.path.join(workdir, phase, "metrics.jsonl"))]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
