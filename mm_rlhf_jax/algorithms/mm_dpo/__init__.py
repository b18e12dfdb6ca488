"""MM-DPO (MM-RLHF §4.2): run.py (the run), step.py (the pure train step and its beta modes)."""
