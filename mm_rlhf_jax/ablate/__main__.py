"""Reproduce one of the papers' ablation tables.

    python -m mm_rlhf_jax.ablate <table> --workdir DIR [--seeds N | --seeds 0,2] [--cells a,b] \\
        [--scale tiny|paper] [-- --config.x=y ...]
    python -m mm_rlhf_jax.ablate --list

--scale tiny (default) runs every (cell, seed) on the table's CPU preset as its own
`python -m mm_rlhf_jax.main` process in DIR/<table>/<cell>/seed_<s> (re-running skips those with an
eval.json and resumes the others), then writes DIR/<table>.md, .json and .png. --scale paper prints the
commands for the paper-scale preset instead (first `python -m mm_rlhf_jax.aot` per cell: does it fit?).
Flags after `--` go to every run last (micro settings, checkpoint and data paths).
"""

import argparse
import sys

from mm_rlhf_jax.ablate import aggregate, report, run
from mm_rlhf_jax.ablate.spec import SCALES
from mm_rlhf_jax.ablate.tables import TABLES


def parse_seeds(text: str) -> list[int]:
    """"3" -> [0, 1, 2]; "0,2" -> [0, 2]."""
    return [int(s) for s in text.split(",")] if "," in text else list(range(int(text)))


def list_tables() -> str:
    rows = []
    for name in TABLES.names():
        t = TABLES.get(name)
        rows.append(f"{name}: {t.title}\n  {t.config_spec('tiny')} | cells {', '.join(c.label for c in t.cells)}"
                    f" | reads {', '.join(t.metrics)}")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(prog="python -m mm_rlhf_jax.ablate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", nargs="?", help=f"one of {TABLES.names()}")
    p.add_argument("--workdir", help="DIR: runs in DIR/<table>/<cell>/seed_<s>, reports DIR/<table>.{md,json,png}")
    p.add_argument("--seeds", default="3", help="N (seeds 0..N-1) or a comma list")
    p.add_argument("--cells", default="", help="comma list of cell labels (default: all)")
    p.add_argument("--scale", default="tiny", choices=sorted(SCALES))
    p.add_argument("--list", action="store_true", help="list the tables and exit")
    a = p.parse_args(own)
    if a.list:
        print(list_tables())
        return 0
    if not a.table or not a.workdir:
        p.error("a table and --workdir are required (--list shows the tables)")
    table = TABLES.get(a.table)
    seeds = parse_seeds(a.seeds)
    jobs = run.plan(table, cells=[c for c in a.cells.split(",") if c], seeds=seeds, root=a.workdir,
                    scale=a.scale, extra=extra)
    if a.scale == "paper":
        print("\n".join(run.paper_commands(table, jobs, extra)))
        return 0
    status = run.run_jobs(jobs, log=lambda line: print(line, file=sys.stderr, flush=True))
    data = aggregate.aggregate(table, run.read_evals(jobs))
    data["run"] = {"config": table.config_spec(a.scale), "seeds": seeds, "extra": extra,
                   "status": {f"{c}/seed_{s}": v for (c, s), v in status.items()}}
    paths = report.write(data, a.workdir)
    print(report.markdown(data))
    print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}", file=sys.stderr)
    return 1 if "failed" in status.values() else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
