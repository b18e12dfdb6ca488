"""MM-RLHF data layer: records, pairs, media preprocessing, tokenization, batches, pipelines.

records.py / validation.py   query and pair schemas; file:line:field errors (errors.py)
pairs.py                     all pairs from a ranking, ties kept apart
split.py                     train / held-out pair files by whole queries (python -m mm_rlhf_jax.data.split)
images.py / video.py         LLaVA-OneVision anyres images; frame-folder videos
tokenizer.py / tokenize.py   local tokenizer + chat template; ids and loss masks (preference, critique RM)
batch.py                     the batch contract the train steps consume ([B, 2, T] pairs and packed rows),
                             validate_batch / validate_packed_batch
sources.py / example.py      grain sources (jsonl) and the per-example encoder
pipeline.py                  grain pipeline: host shard, per-epoch shuffle, workers, checkpointable iterator
packed_example.py            a pair as its shared prefix + two branches, media as uint8 tiles
packing.py / packed_pipeline.py  pairs into rows of a token budget; the checkpointable packed iterator
tfds_builder.py              array_record tfds builder + source for the same pipeline
prompts.py / prompts_pool.py generation prompts of pair records; RL prompt pools
curriculum.py                the RL prompt iterator (math/code-first schedule)
longpo/                      LongPO samples: chunking, self-generated pairs, filters, packing
synthetic/                   the bundled tiny tasks behind the `tiny` presets (product, not test code) and
                             the MM-RLHF-like length mix (length_mix.py)

Submodules are imported explicitly (this package imports nothing heavy on its own).
"""
