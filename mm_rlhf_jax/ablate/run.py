"""Running a table: each (cell, seed) its own `python -m mm_rlhf_jax.main` process in its own workdir.

    DIR/<table>/<cell>/seed_<s>/     the run's workdir (eval.json, checkpoints, metrics.jsonl, ...)
    DIR/<table>/<cell>/seed_<s>/ablate.log   the child's stdout and stderr

The command is `main --config <preset> --workdir ... <cell overrides> <seed flags> <extra flags>`: the extra
flags (micro settings, local paths) come last and win. A (cell, seed) whose eval.json exists is done and is
not started again; an interrupted one is started again and `main` resumes it from its checkpoints.

    jobs = plan(TABLES.get("mm_dpo_beta"), cells=None, seeds=[0, 1], root="runs/ablate")
    status = run_jobs(jobs)                      # or run_jobs(jobs, runner=fake) in tests
"""

import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

from mm_rlhf_jax import storage
from mm_rlhf_jax.ablate import seeds as seeds_lib
from mm_rlhf_jax.ablate.spec import Table

# The checkout this package lives in: its configs/ and the package the child processes import.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVAL_FILE = "eval.json"
LOG_FILE = "ablate.log"


@dataclasses.dataclass(frozen=True)
class Job:
    """One (cell, seed) run: `command` is the argv of its main process (python first)."""
    table: str
    cell: str
    seed: int
    workdir: str
    command: tuple[str, ...]

    @property
    def eval_path(self) -> str:
        return storage.join(self.workdir, EVAL_FILE)


@dataclasses.dataclass(frozen=True)
class Outcome:
    returncode: int
    log_tail: str = ""  # the end of the child's output (the error when it failed)


# job -> outcome; the default starts the real process, tests pass a fake that writes eval.json itself.
Runner = Callable[[Job], Outcome]


def flag_value(v) -> str:
    """A config value as an ml_collections command-line value (tuples as "(a,b,)")."""
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(flag_value(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def override_flags(overrides: dict) -> list[str]:
    return [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]


def cell_workdir(root: str, table: str, cell: str, seed: int) -> str:
    return storage.join(root, table, cell, f"seed_{seed}")


def selected_cells(table: Table, cells: Sequence[str] | None) -> list[str]:
    """The labels to run: all of the table's, or `cells` (unknown labels are errors naming the known ones)."""
    if not cells:
        return [c.label for c in table.cells]
    for label in cells:
        table.cell(label)
    return list(cells)


def plan(table: Table, *, cells: Sequence[str] | None, seeds: Sequence[int], root: str, scale: str = "tiny",
         extra: Sequence[str] = (), python: str = sys.executable) -> list[Job]:
    """Every (cell, seed) job of the table, cells in table order, seeds inner."""
    spec = table.config_spec(scale)
    absolute_spec = os.path.join(REPO, spec)
    out = []
    for label in selected_cells(table, cells):
        flags = override_flags(table.overrides(table.cell(label), scale))
        for seed in seeds:
            _, seed_flags = seeds_lib.seed_flags(absolute_spec, seed)
            workdir = cell_workdir(root, table.name, label, seed)
            out.append(Job(table.name, label, seed, workdir, (
                python, "-m", "mm_rlhf_jax.main", f"--config={absolute_spec}", f"--workdir={workdir}",
                *flags, *seed_flags, *extra)))
    return out


def subprocess_runner(job: Job) -> Outcome:
    """Runs job.command with this checkout first on PYTHONPATH; its output goes to <workdir>/ablate.log."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    with tempfile.TemporaryFile("w+") as log:  # local, then copied: the workdir may be a gs:// URL
        proc = subprocess.run(job.command, stdout=log, stderr=subprocess.STDOUT, env=env, text=True, cwd=REPO)
        log.seek(0)
        text = log.read()
    storage.makedirs(job.workdir)
    storage.write_atomic(storage.join(job.workdir, LOG_FILE), text)
    return Outcome(proc.returncode, text[-3000:])


def run_jobs(jobs: Sequence[Job], runner: Runner | None = None, log=print) -> dict[tuple[str, int], str]:
    """Runs the jobs without an eval.json, one at a time; -> {(cell, seed): "done" | "skipped" | "failed"}.

    runner None: subprocess_runner, looked up at call time (tests replace it to run the CLI without training).
    A failed job does not stop the others (the report shows what exists); its output tail is logged.
    """
    runner = runner or subprocess_runner
    status = {}
    for i, job in enumerate(jobs, 1):
        where = f"{job.table}/{job.cell}/seed_{job.seed}"
        if storage.exists(job.eval_path):
            status[(job.cell, job.seed)] = "skipped"
            log(f"[ablate {i}/{len(jobs)}] {where}: eval.json exists, not rerun")
            continue
        log(f"[ablate {i}/{len(jobs)}] {where}: running")
        t0 = time.time()
        outcome = runner(job)
        ok = outcome.returncode == 0 and storage.exists(job.eval_path)
        status[(job.cell, job.seed)] = "done" if ok else "failed"
        log(f"[ablate {i}/{len(jobs)}] {where}: {status[(job.cell, job.seed)]} in {time.time() - t0:.0f} s"
            + ("" if ok else f" (exit {outcome.returncode}; {storage.join(job.workdir, LOG_FILE)})\n"
                             f"{outcome.log_tail}"))
    return status


def read_evals(jobs: Sequence[Job]) -> dict[str, dict[int, dict]]:
    """{cell: {seed: eval.json}} of the jobs that have one (cells in job order, even those without any)."""
    import json

    out: dict[str, dict[int, dict]] = {}
    for job in jobs:
        out.setdefault(job.cell, {})
        if storage.exists(job.eval_path):
            out[job.cell][job.seed] = json.loads(storage.read_text(job.eval_path))
    return out


def paper_commands(table: Table, jobs: Sequence[Job], extra: Sequence[str] = ()) -> list[str]:
    """Shell lines for a paper-scale table: per cell the aot check of its config, then its (cell, seed) runs.

    The paper presets read local checkpoints and data (configs/<algorithm>.py's docstring says which flags set
    them); the aot compile needs neither, so it can be run first on a CPU host.
    """
    lines = []
    for label in dict.fromkeys(j.cell for j in jobs):
        if table.cell(label).tiny_only:
            lines.append(f"# {label}: no paper-scale run ({table.cell(label).tiny_only})")
            continue
        flags = override_flags(table.overrides(table.cell(label), "paper"))
        lines.append(shlex.join(["python", "-m", "mm_rlhf_jax.aot", f"--config={table.config_spec('paper')}",
                                 f"--topology={table.topology}", *flags, *extra]))
        for job in (j for j in jobs if j.cell == label):
            # python -m mm_rlhf_jax.main --config=...: the preset relative to the repository, as the README shows
            argv = ["python", *job.command[1:3], f"--config={table.config_spec('paper')}", *job.command[4:]]
            lines.append(shlex.join(argv))
    return lines
