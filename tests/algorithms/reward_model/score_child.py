"""A scoring process for the SIGKILL-resume test: score_file over a pair file with the tiny RM, one CPU device.

    python score_child.py WORKDIR PAIRS OUTPUT LOG [SLEEP_S]

Appends the index of every batch it scores to LOG (one line each, flushed), sleeps
SLEEP_S after each (so the test can kill it mid-way), and prints the ScoreResult
as JSON at the end.
"""

import dataclasses
import json
import sys
import time


def main(workdir, pairs, output, log, sleep_s="0"):
    import jax

    from mm_rlhf_jax.algorithms.reward_model.score import score_file
    from mm_rlhf_jax.sharding import make_mesh
    from mm_rlhf_jax.algorithms.reward_model.tiny import TinyRM

    mesh = make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    rm = TinyRM.build(workdir, mesh, batch_size=8, max_critique_tokens=2)
    inner = rm.inference.score_batch

    def counted(bound, records, *, fold, **kw):
        out = inner(bound, records, fold=fold, **kw)
        with open(log, "a") as f:
            f.write(f"{fold}\n")
        time.sleep(float(sleep_s))
        return out

    rm.inference.score_batch = counted
    result = score_file(rm.inference, rm.params, rm.score_block(pairs, output, part_batches=1), critique=True,
                        workdir=workdir)
    print(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    main(*sys.argv[1:])
