"""Packing: the prefix split, best-fit rows, the row layout (hand-computed), validation, padding waste on an
MM-RLHF-like length mix, and the packed iterator's determinism, resume and coverage."""

import json

import numpy as np
import pytest

from mm_rlhf_jax.data import packing
from mm_rlhf_jax.data.batch import validate_packed_batch
from mm_rlhf_jax.data.packed_example import compact_tokens
from mm_rlhf_jax.data.packed_pipeline import PackedIterator
from mm_rlhf_jax.data.synthetic import length_mix


def pair(prefix, chosen, rejected, *, tiles=0, tile_size=1, seed=0):
    """A compact pair of the given lengths (random ids, every response token scored)."""
    rng = np.random.default_rng(seed)
    n = prefix + chosen + rejected
    cm = np.r_[np.zeros(prefix), np.ones(chosen), np.zeros(rejected)].astype(np.float32)
    rm = np.r_[np.zeros(prefix + chosen), np.ones(rejected)].astype(np.float32)
    return {"ids": rng.integers(10, 99, n).astype(np.int32), "chosen_mask": cm, "rejected_mask": rm,
            "media_ordinal": np.zeros(n, np.int32), "lengths": np.asarray([prefix, chosen, rejected], np.int32),
            "tiles": np.zeros((tiles, 3, tile_size, tile_size), np.uint8), "image_size": np.zeros(2, np.int32),
            "is_video": np.bool_(False), "delta": np.float32(1.0), "ls_factor": np.float32(0.5), "ref_logps": np.float32([-3.0, -4.0]),
            "is_tie": np.bool_(False), "has_critique": np.bool_(False), "query_id": np.int32(seed),
            "category": np.int32(0)}


def test_compact_tokens_splits_at_the_longest_common_prefix():
    ids = np.array([[1, 2, 3, 4, 5, 0], [1, 2, 3, 9, 0, 0]], np.int32)
    att = (ids != 0).astype(np.int32)
    loss = np.array([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]], np.float32)  # token 3 is a shared response token
    out = compact_tokens(ids, att, loss)
    assert out["lengths"].tolist() == [3, 2, 1]
    assert out["ids"].tolist() == [1, 2, 3, 4, 5, 9]
    assert out["chosen_mask"].tolist() == [0, 0, 1, 1, 1, 0]
    assert out["rejected_mask"].tolist() == [0, 0, 1, 0, 0, 1]
    # Identical sequences keep one token per branch (the reward head reads each branch's last token).
    same = np.array([[1, 2, 3], [1, 2, 3]], np.int32)
    assert compact_tokens(same, np.ones_like(same), np.zeros((2, 3), np.float32))["lengths"].tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match="share no first token"):
        compact_tokens(np.array([[1, 2], [3, 4]]), np.ones((2, 2), np.int32), np.zeros((2, 2), np.float32))


def test_pack_rows_is_best_fit_decreasing_within_every_budget():
    layout = packing.PackingLayout(row_length=10, pairs_per_row=2, rows=1, tile_buckets=(4,), tile_size=1,
                                   pixel_affine=((1,) * 3, (0,) * 3))
    sizes = [(6, 0), (4, 3), (5, 0), (3, 0), (2, 2), (4, 0)]
    # 6 -> row0; 5 -> row1; 4(3 tiles) -> row0 (free 4 = tightest of 4, 5); 4 -> row1 (free 5);
    # 3 -> new row2 (rows 0 and 1 hold 2 pairs); 2(2 tiles) -> row2.
    assert packing.pack_rows(sizes, layout) == [[0, 1], [2, 5], [3, 4]]
    # Carried-over items are placed first: item 5 (4 tokens) now opens row 0.
    assert packing.pack_rows(sizes[::-1], layout, first=1)[0] == [0, 5]
    with pytest.raises(ValueError, match="exceeds a row"):
        packing.pack_rows([(11, 0)], layout)


def test_collate_lays_out_prefix_branches_positions_and_predictions():
    layout = packing.PackingLayout(row_length=12, pairs_per_row=3, rows=2, tile_buckets=(2, 4), tile_size=1,
                                   pixel_affine=((2.0,) * 3, (-1.0,) * 3))
    a, b = pair(2, 2, 1, tiles=1, seed=1), pair(3, 1, 2, tiles=2, seed=2)
    batch = packing.collate([[a, b]], layout, indices=[[7, 9]])
    assert validate_packed_batch(batch) == {"R": 2, "T": 12, "K": 3, "N": 4, "S": 1}
    row = lambda k: batch[k][0].tolist()  # noqa: E731
    assert row("segment_ids") == [1] * 5 + [2] * 6 + [0]
    assert row("branch_ids") == [0, 0, 1, 1, 2, 0, 0, 0, 1, 2, 2, 0]
    assert row("positions") == [0, 1, 2, 3, 2, 0, 1, 2, 3, 3, 4, 0]
    # t - 1, except each pair's first token (itself) and its first rejected token (its last prefix token).
    assert row("pred_pos") == [0, 0, 1, 2, 1, 5, 5, 6, 7, 7, 9, 0]
    assert batch["seq_last"][0].tolist() == [[3, 4], [8, 10], [0, 0]]
    assert row("chosen_mask") == [0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0]
    assert row("rejected_mask") == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0]
    assert batch["pair_valid"].tolist() == [[True, True, False], [False, False, False]]
    assert batch["pair_index"].tolist() == [[7, 9, -1], [-1, -1, -1]]
    assert batch["media_offset"][0].tolist() == [0, 1, 0] and batch["media_tiles"][0].tolist() == [1, 2, 0]
    assert batch["pixel_affine"][1].tolist() == [[2.0] * 3, [-1.0] * 3]
    np.testing.assert_array_equal(batch["input_ids"][0, :11], np.r_[a["ids"], b["ids"]])
    assert (batch["input_ids"][1] == layout.pad_id).all()


def test_validation_names_the_broken_row_and_field():
    layout = packing.PackingLayout(row_length=12, pairs_per_row=2, rows=1)
    good = packing.collate([[pair(2, 2, 1), pair(3, 1, 2)]], layout)
    validate_packed_batch(good)
    bad = {**good, "pred_pos": good["pred_pos"].copy()}
    bad["pred_pos"][0, 4] = 3  # the first rejected token read from the last chosen token
    with pytest.raises(ValueError, match="row 0 slot 0: pred_pos"):
        validate_packed_batch(bad)
    bad = {**good, "positions": good["positions"].copy()}
    bad["positions"][0, 9] = 4
    with pytest.raises(ValueError, match="row 0 slot 1: positions"):
        validate_packed_batch(bad)
    bad = {**good, "pair_valid": np.array([[True, False]])}
    with pytest.raises(ValueError, match="row 0 slot 1: pair_valid is False but the slot has tokens"):
        validate_packed_batch(bad)
    with pytest.raises(ValueError, match=r"batch\['delta'\] has shape \[1, 3\], expected \[R, K\]"):
        validate_packed_batch({**good, "delta": np.zeros((1, 3), np.float32)})
    with pytest.raises(ValueError, match="missing keys"):
        validate_packed_batch({k: v for k, v in good.items() if k != "pred_pos"})


def mix_pairs(n, seed=0, with_tiles=False):
    return [pair(p.prefix, p.chosen, p.rejected, tiles=p.tiles if with_tiles else 0, seed=i)
            for i, p in enumerate(length_mix.sample(n, seed))]


def test_realistic_length_mix_wastes_under_ten_percent_of_every_batch():
    """The MM-RLHF-like mix (LLaVA-OV-7B image tokens 1.1K-8.8K, prompts 20-300 words, responses 50-600
    tokens) in 16K-token rows of up to 8 pairs: every batch of 8 rows is > 90% real tokens, where padding
    both sequences of each pair to the longest sequence of its batch of 16 pairs is mostly padding.
    (bench/packing_efficiency.py prints the same figures as JSON.)"""
    pairs = mix_pairs(1200, with_tiles=True)
    layout = packing.PackingLayout(row_length=16384, pairs_per_row=8, rows=8, tile_buckets=(8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 296),
                                   tile_size=1, pixel_affine=((1,) * 3, (0,) * 3))
    it = PackedIterator(pairs, layout, window=256, drop_remainder=True, num_threads=1)
    batches = list(it)
    wastes = [1 - packing.real_tokens(b) / b["segment_ids"].size for b in batches]
    assert len(wastes) >= 10
    assert max(wastes) < 0.10, wastes
    # Tiles: a batch's tile axis is its fullest row's bucket; still far less padding than P = 37 per pair.
    tile_waste = 1 - sum(b["media_tiles"].sum() for b in batches) / sum(b["pixel_values"].shape[0] *
                                                                         b["pixel_values"].shape[1] for b in batches)
    assert tile_waste < 0.35, tile_waste
    tiles = np.array([p["tiles"].shape[0] for p in pairs])
    assert 1 - tiles.mean() / 37 > 0.7
    # The padded [B, 2, T] layout on the same pairs, T = the longest sequence of each 16-pair batch.
    seqs = np.array([[p["lengths"][0] + p["lengths"][1], p["lengths"][0] + p["lengths"][2]] for p in pairs])
    padded = seqs[:len(seqs) // 16 * 16].reshape(-1, 16, 2)
    padded_waste = 1 - padded.sum() / (padded.max(axis=(1, 2)) * 32).sum()
    assert padded_waste > 0.4, padded_waste


def run(it, n):
    return [next(it) for _ in range(n)]


def test_iterator_is_deterministic_and_resumes_exactly():
    import grain

    pairs = mix_pairs(90, seed=1)
    ds = grain.MapDataset.source(pairs).shuffle(seed=3).repeat(None)  # an endless stream, as in training
    layout = packing.PackingLayout(row_length=16384, pairs_per_row=8, rows=2)
    make = lambda: PackedIterator(ds, layout, window=20, num_threads=2)  # noqa: E731
    full = run(make(), 12)
    again = make()
    first = run(again, 5)
    state = json.loads(json.dumps(again.get_state()))  # JSON-able
    restored = make()
    restored.set_state(state)
    rest = run(restored, 7)
    for x, y in zip(full, first + rest):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert state["emitted"] > 0 or state["deferred"], state  # the state is mid-window, not trivially empty


def test_one_pass_emits_every_pair_exactly_once():
    pairs = mix_pairs(70, seed=2)
    layout = packing.PackingLayout(row_length=16384, pairs_per_row=4, rows=3)
    seen, deferred_once = [], 0
    it = PackedIterator(pairs, layout, window=16, drop_remainder=False, num_threads=1)
    for batch in it:
        seen += batch["pair_index"][batch["pair_valid"]].tolist()
        deferred_once += len(it.get_state()["deferred"])
        for r, k in zip(*np.nonzero(batch["pair_valid"])):
            i = batch["pair_index"][r, k]
            np.testing.assert_array_equal(batch["input_ids"][r][batch["segment_ids"][r] == k + 1], pairs[i]["ids"])
    assert sorted(seen) == list(range(70))
    assert deferred_once > 0  # some rows were carried over and still came out once


def test_encoder_names_the_record_of_a_pair_longer_than_a_row(tmp_path):
    from mm_rlhf_jax.data.errors import DataError
    from mm_rlhf_jax.data.packed_example import PackedPairEncoder

    from tests.train.packed_reference import Synthetic

    syn = Synthetic(str(tmp_path))
    pair0 = PackedPairEncoder(syn.encoder_cfg)(syn.source[0])
    p, c, r = pair0["lengths"]
    assert pair0["tiles"].dtype == np.uint8 and pair0["tiles"].shape[1:] == (3, 32, 32)
    # The prefix holds the whole prompt with its media tokens; each branch ends in its response.
    assert pair0["chosen_mask"][p:p + c].any() and pair0["rejected_mask"][p + c:].any()
    assert (pair0["media_ordinal"][:p].max() + 1) == np.isin(pair0["ids"][:p], (5, 6)).sum()
    with pytest.raises(DataError, match=r"dpo_pairs\.jsonl:\d+.*prompt.*data\.pack_length=50"):
        PackedPairEncoder(syn.encoder_cfg, row_length=50)(syn.source[0])
    with pytest.raises(DataError, match=r"dpo_pairs\.jsonl:\d+.*tiles > the 1 tiles a packed row holds"):
        PackedPairEncoder(syn.encoder_cfg, max_row_tiles=1)(syn.source[0])
