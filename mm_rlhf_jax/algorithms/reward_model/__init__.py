"""The critique reward model (MM-RLHF §3.2): run.py, step.py (loss), inference.py (critique then score),
score.py (delta for a pair file)."""
