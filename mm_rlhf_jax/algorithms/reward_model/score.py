"""Scoring a pair file with a trained reward model: each pair's margin `delta` for MM-DPO's dynamic beta."""

import logging
import posixpath

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.algorithms.reward_model.inference import RewardModelInference
from mm_rlhf_jax.data.validation import load_pairs, read_jsonl, write_jsonl


def score_file(inference: RewardModelInference, params, s, *, critique: bool) -> str:
    """Scores every pair of s.input (the `score` block); writes each input line's object plus the RM's fields.

    Added: delta = chosen_reward - rejected_reward (the margin MM-DPO's dynamic
    beta reads), both rewards, the generated critiques (critique mode), and
    source_delta (an input's own delta, when it had one).
    """
    records = load_pairs(s.input, media_root=s.media_root or None)
    media_root = s.media_root or storage.dirname(s.input)
    rewards, generated = inference.rewards(params, records, media_root=media_root, generate=critique)
    generated = generated or [None] * len(records)
    # Rows start from the raw JSON objects, so fields this library does not parse survive scoring.
    raw = [obj for _, obj in read_jsonl(s.input)]
    rows = []
    for obj, (rc, rr), gen in zip(raw, rewards, generated):
        row = dict(obj)
        if "delta" in row:  # a margin from elsewhere (e.g. annotator scores): kept, but delta is now ours
            row["source_delta"] = row["delta"]
        row.update(delta=float(rc - rr), chosen_reward=float(rc), rejected_reward=float(rr))
        if gen is not None:
            row["chosen_generated_critique"] = gen.chosen_reason
            row["rejected_generated_critique"] = gen.rejected_reason
        rows.append(row)
    out = s.output or posixpath.splitext(s.input)[0] + "_scored.jsonl"  # string-only: URLs stay intact
    if distributed.is_primary():  # every process scored every pair (inference is collective); one writes
        write_jsonl(out, rows)  # at once: readers see the old file or the new one
    logging.info("wrote %d scored pairs to %s", len(rows), out)
    return out
