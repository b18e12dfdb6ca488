"""Reproductions of the papers' ablation tables: each cell a config override of a preset, run per seed.

    python -m mm_rlhf_jax.ablate <table> [--seeds N] [--scale tiny|paper] --workdir DIR [-- --config.x=y ...]

tables.py registers the tables (spec.py: what a table is), run.py runs every (cell, seed) as its own
`python -m mm_rlhf_jax.main` process, aggregate.py turns eval.json files into per-cell statistics and
direction verdicts, report.py writes DIR/<table>.{md,json,png}. Nothing here imports jax: the training
happens in the child processes.
"""
