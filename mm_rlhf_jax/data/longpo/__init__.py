"""LongPO data: self-generated short-to-long preference pairs (papers.md §3).

chunking.py   documents -> paragraph-grouped chunks (<= max tokens, <= 4 per document)
prompts.py    self-instruct query prompt, long-instruction phrases, question parsing, answer prompts
filters.py    refused (censored) and repetitive / truncated answer filters
textgen.py    chat conversations -> texts with the jitted KV-cache sampler, length-bucketed batches
generate.py   the resumable generation stages -> samples.jsonl (+ stats.json)
samples.py    a multi-turn sample -> shared-prompt packed long sequence + short reference inputs
pipeline.py   grain iterators over samples (with cached reference log-probs)
"""
