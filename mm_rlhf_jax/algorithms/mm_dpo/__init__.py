"""MM-DPO (MM-RLHF §4.2): run.py (the run), step.py (the pure train step), beta.py (the beta modes, the
per-pair field each reads and the check that the data has it), spec.py (the steps for aot.py)."""
