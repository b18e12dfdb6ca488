"""Shared test / tiny-preset artefacts: tiny tokenizer, synthetic MM-RLHF data and its shapes.

tiny_tokenizer.py      word-level tokenizer (TINY_VOCAB_SIZE) with a Qwen2-style chat template
synthetic_mmrlhf.py    seeded MM-RLHF-format dataset writer, ground truth for held-out evals
synthetic_tasks.py     question / response / critique templates
shapes.py              coloured-shape images and videos
"""
