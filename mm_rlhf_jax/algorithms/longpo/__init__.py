"""LongPO: run.py (rounds), step.py (the short-to-long loss step), data.py (tasks, self-generated pairs,
reference log-probs), evaluator.py."""
