"""Evaluation metrics (host-side numpy over gathered per-example results)."""
