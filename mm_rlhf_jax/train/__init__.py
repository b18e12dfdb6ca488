"""Shared training machinery (no file here names an algorithm; the algorithms live in algorithms/).

state.py / partition.py / optim.py   the train state, trainable masks, optimizers (+ the SFT recipe)
loop.py / checkpoint.py / metrics.py  the one host loop, orbax checkpoints, metric sinks
phase.py                              the run context and the phase runner every phase goes through
model_factory.py                      the one model loader (policy, judges, frozen models, LongPO modules)
sft.py                                the one supervised phase and its front-ends
pair_data.py / forward.py             MM-RLHF pair files and encoders; pair forwards and log-probs
packed_data.py / packed_forward.py    either pair layout's iterators and ordered passes; packed-row forwards
batch_spec.py                         abstract batches of a config (ahead-of-time compiles)
reference_cache.py                    reference log-probs cached by content hash
"""
