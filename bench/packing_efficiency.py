"""Padding efficiency of packed vs padded preference batches on the MM-RLHF-like length mix (host only, no model).

  python bench/packing_efficiency.py [--pairs 4000 --pack-length 16384 --pairs-per-row 8 --rows 8]

The mix is data/synthetic/length_mix.py (LLaVA-OV-7B anyres image tokens, 20-300-word prompts, 50-600-token
responses; its docstring says where the ranges come from). Each pair is encoded the way the packed pipeline
stores it (prefix once, then the chosen and the rejected branch) and run through the real packed iterator
(data/packed_pipeline.py: best-fit decreasing over windows, deferred rows, tile buckets), against two padded
[B, 2, T] layouts of the same pairs:

- padded_to_max_length: both sequences of every pair padded to data.max_length (what the unpacked pipeline
  does; 32,768 in configs/mm_dpo.py:llava_ov_7b, 16,384 here by default, the shortest that holds the mix);
- padded_to_batch_longest: padded to the longest sequence of each batch of --batch pairs (TRL's collator);

and media: the unpacked layout pads every pair's tiles to P = 37 (anyres_max_9's largest grid + base tile),
the packed one lays a row's tiles end to end and pads a batch to the smallest tile bucket of its fullest row.

"token_share_of_padded_work" is the tokens the packed batches process (their whole budget) per pair, over
the padded layout's: what packing saves in decoder work before any kernel skips padding. Prints one JSON object.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mm_rlhf_jax.data import packing  # noqa: E402
from mm_rlhf_jax.data.packed_pipeline import PackedIterator  # noqa: E402
from mm_rlhf_jax.data.synthetic import length_mix  # noqa: E402
from mm_rlhf_jax.train.packed_data import tile_buckets  # noqa: E402

MAX_TILES_PER_MEDIA = 37  # 1 + 6 x 6 (LLaVA-OV pinpoints)


def compact(p: length_mix.PairLengths, i: int) -> dict:
    """A compact pair of the given lengths (what PackedPairEncoder emits; 1-pixel tiles keep memory small)."""
    n = p.packed
    return {"ids": np.zeros(n, np.int32), "chosen_mask": np.zeros(n, np.float32),
            "rejected_mask": np.zeros(n, np.float32), "media_ordinal": np.zeros(n, np.int32),
            "lengths": np.asarray([p.prefix, p.chosen, p.rejected], np.int32),
            "tiles": np.zeros((p.tiles, 3, 1, 1), np.uint8), "image_size": np.zeros(2, np.int32),
            "is_video": np.bool_(False), "delta": np.float32(0), "ref_logps": np.zeros(2, np.float32),
            "is_tie": np.bool_(False), "has_critique": np.bool_(False), "query_id": np.int32(i),
            "category": np.int32(0)}


def quantiles(x) -> dict:
    x = np.asarray(x)
    return {"min": int(x.min()), "p10": int(np.percentile(x, 10)), "median": int(np.median(x)),
            "p90": int(np.percentile(x, 90)), "max": int(x.max()), "mean": round(float(x.mean()), 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pack-length", type=int, default=16384, help="tokens per packed row")
    p.add_argument("--pairs-per-row", type=int, default=8)
    p.add_argument("--rows", type=int, default=8, help="rows per packed batch")
    p.add_argument("--window", type=int, default=0, help="pairs per packing round (0 = 4 x pairs/row x rows)")
    p.add_argument("--max-length", type=int, default=16384, help="the padded layout's T")
    p.add_argument("--batch", type=int, default=16, help="pairs per padded batch")
    a = p.parse_args()
    t0 = time.time()
    mix = length_mix.sample(a.pairs, a.seed)
    if max(m.prefix + max(m.chosen, m.rejected) for m in mix) > a.max_length:
        raise SystemExit(f"--max-length {a.max_length} is shorter than the mix's longest sequence")
    pairs = [compact(m, i) for i, m in enumerate(mix)]
    max_tiles = a.pairs_per_row * MAX_TILES_PER_MEDIA
    layout = packing.PackingLayout(row_length=a.pack_length, pairs_per_row=a.pairs_per_row, rows=a.rows,
                                   tile_buckets=tile_buckets(max_tiles, MAX_TILES_PER_MEDIA), tile_size=1,
                                   pixel_affine=((1.0,) * 3, (0.0,) * 3))
    window = a.window or 4 * a.pairs_per_row * a.rows
    batches = list(PackedIterator(pairs, layout, window=window, drop_remainder=True, num_threads=1))
    real = np.array([packing.real_tokens(b) for b in batches])
    n_pairs = np.array([int(b["pair_valid"].sum()) for b in batches])
    budget = a.rows * a.pack_length
    waste = 1 - real / budget
    tiles_real = sum(int(b["media_tiles"].sum()) for b in batches)
    tiles_slots = sum(b["pixel_values"].shape[0] * b["pixel_values"].shape[1] for b in batches)
    packed_pairs = int(n_pairs.sum())

    seq = np.array([[m.prefix + m.chosen, m.prefix + m.rejected] for m in mix])
    unpacked_real = int(seq.sum())
    groups = seq[:len(seq) // a.batch * a.batch].reshape(-1, a.batch, 2)
    to_batch = (groups.max(axis=(1, 2)) * 2 * a.batch).sum()
    tiles = np.array([m.tiles for m in mix])
    per_pair_packed = budget * len(batches) / packed_pairs
    out = {
        "mix": {"source": "mm_rlhf_jax/data/synthetic/length_mix.py", "pairs": a.pairs, "seed": a.seed,
                "prefix_tokens": quantiles([m.prefix for m in mix]),
                "media_tokens_of_image_pairs": quantiles([m.media_tokens for m in mix if m.media_tokens
                                                          and m.tiles != length_mix.VIDEO_FRAMES]),
                "response_tokens": quantiles([m.chosen for m in mix] + [m.rejected for m in mix]),
                "packed_pair_tokens": quantiles([m.packed for m in mix]),
                "sequence_tokens": quantiles(seq.reshape(-1)),
                "tiles_per_pair": quantiles(tiles),
                "prompt_share_of_unpacked_tokens": round(2 * sum(m.prefix for m in mix) / unpacked_real, 3)},
        "packed": {"pack_length": a.pack_length, "pairs_per_row": a.pairs_per_row, "rows": a.rows,
                   "window": window, "tile_buckets": list(layout.tile_buckets), "batches": len(batches),
                   "pairs_packed": packed_pairs, "pairs_per_row_mean": round(packed_pairs / (a.rows * len(batches)), 2),
                   "token_waste": round(1 - real.sum() / (budget * len(batches)), 4),
                   "token_waste_per_batch": {"median": round(float(np.median(waste)), 4),
                                             "p90": round(float(np.percentile(waste, 90)), 4),
                                             "max": round(float(waste.max()), 4)},
                   "tile_waste": round(1 - tiles_real / tiles_slots, 4),
                   "tile_axis_per_batch": sorted({b["pixel_values"].shape[1] for b in batches}),
                   "tokens_per_pair": round(per_pair_packed, 1)},
        "padded_to_max_length": {"max_length": a.max_length,
                                 "token_waste": round(1 - unpacked_real / (2 * a.max_length * len(mix)), 4),
                                 "tokens_per_pair": 2 * a.max_length,
                                 "tile_waste": round(1 - tiles.mean() / MAX_TILES_PER_MEDIA, 4)},
        "padded_to_batch_longest": {"batch_pairs": a.batch,
                                    "token_waste": round(1 - groups.sum() / to_batch, 4),
                                    "tokens_per_pair": round(to_batch / (groups.shape[0] * a.batch), 1)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    out["token_share_of_padded_work"] = {
        "vs_padded_to_max_length": round(per_pair_packed / (2 * a.max_length), 4),
        "vs_padded_to_batch_longest": round(per_pair_packed / out["padded_to_batch_longest"]["tokens_per_pair"], 4),
        "vs_unpadded_pairs": round(per_pair_packed / (unpacked_real / len(mix)), 4)}
    out["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
