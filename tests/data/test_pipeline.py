"""grain pipelines: contents, determinism, per-epoch reshuffle, host slots, ordered passes, resume from saved state."""

import json
import os

import grain
import numpy as np
import pytest
from transformers import LlavaOnevisionImageProcessorPil

from mm_rlhf_jax.data import pipeline
from mm_rlhf_jax.data.batch import validate_batch
from mm_rlhf_jax.data.example import EncoderConfig
from mm_rlhf_jax.data.records import CATEGORIES
from mm_rlhf_jax.data.sources import JsonlPairSource
from mm_rlhf_jax.data.tokenize import Media, tokenize_critique, tokenize_preference
from mm_rlhf_jax.data.tokenizer import load_tokenizer, special_ids
from mm_rlhf_jax.models import anyres
from mm_rlhf_jax.data.synthetic.mmrlhf import TINY_IMAGE_CONFIG, TINY_PATCH_SIZE


@pytest.fixture(scope="module")
def pairs_path(synthetic_dir):
    return os.path.join(synthetic_dir, "train", "dpo_pairs.jsonl")


@pytest.fixture(scope="module")
def dpo_source(pairs_path):
    return JsonlPairSource(pairs_path, include_ties=False)


def enc(tok_dir, kind="preference", max_length=128):
    return EncoderConfig(tokenizer_path=tok_dir, max_length=max_length, kind=kind, image=TINY_IMAGE_CONFIG,
                         patch_size=TINY_PATCH_SIZE, video=True)


def cfg(**kw):
    base = dict(batch_size=4, seed=7, num_epochs=None, shard_index=0, shard_count=1)
    base.update(kw)
    return pipeline.PipelineConfig(**base)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_ties_dropped_for_dpo_kept_for_rm(pairs_path, dpo_source):
    rm_source = JsonlPairSource(pairs_path, include_ties=True)
    ties = [r for r in rm_source.records if r.is_tie]
    assert ties and len(rm_source) == len(dpo_source) + len(ties)
    assert not any(r.is_tie for r in dpo_source.records)
    assert rm_source[len(rm_source) - 1]["query_id"] == 39  # 40 train queries numbered in file order


@pytest.mark.parametrize("kind", ["preference", "reward"])
def test_batches_match_direct_encoding(tiny_tok_dir, pairs_path, kind):
    source = JsonlPairSource(pairs_path, include_ties=kind == "reward")
    max_length = 128 if kind == "preference" else 256
    it = pipeline.make_iterator(source, enc(tiny_tok_dir, kind, max_length), cfg(shuffle=False, batch_size=16))
    batch = next(it)
    validate_batch(batch, kind=kind)
    tok = load_tokenizer(tiny_tok_dir)
    proc = LlavaOnevisionImageProcessorPil(**TINY_IMAGE_CONFIG.to_hf_dict())
    tokenize = tokenize_preference if kind == "preference" else tokenize_critique
    for i in range(16):
        el = source[i]
        rec = el["record"]
        if rec.image is not None:
            ref = proc(images=[os.path.join(el["media_root"], rec.image)], return_tensors="np")
            pv, size = ref["pixel_values"][0], tuple(ref["image_sizes"][0])
            np.testing.assert_allclose(batch["pixel_values"][i, :len(pv)], pv, atol=1e-5, rtol=0)
            assert not batch["pixel_values"][i, len(pv):].any()
            assert tuple(batch["image_sizes"][i]) == size
            count = anyres.num_image_tokens(size, TINY_IMAGE_CONFIG.pinpoints, 32, TINY_PATCH_SIZE, "anyres_max_9")
            media = Media("<image>", special_ids(tok).image, count, "image")
        else:
            media = Media("<video>", special_ids(tok).video, anyres.num_video_tokens(10, 32, TINY_PATCH_SIZE), "video")
            assert batch["has_video"][i] and batch["pixel_values_videos"][i].any()
        expected = tokenize(tok, rec, max_length=max_length, media=media)
        for key in ("input_ids", "attention_mask", "loss_mask"):
            np.testing.assert_array_equal(batch[key][i], expected[key], err_msg=f"{key} of pair {i}")
        assert batch["has_image"][i] == (rec.image is not None)
        assert batch["category"][i] == CATEGORIES.index(rec.category)
        assert batch["query_id"][i] == el["query_id"] and batch["is_tie"][i] == rec.is_tie
        np.testing.assert_allclose(batch["delta"][i], rec.delta, rtol=1e-6)
        assert rec.ls_factor is None and np.isnan(batch["ls_factor"][i])  # absent stays absent (no 1.0)
        assert np.isnan(batch["ref_logps"][i]).all()
    if kind == "reward":
        assert batch["has_critique"].all()


def test_deterministic_and_reshuffled_each_epoch(tiny_tok_dir, dpo_source):
    def order(c):
        rows = [b["input_ids"][0].tobytes() + b["query_id"].tobytes()
                for b in pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), c)]
        return rows

    n = len(dpo_source)
    two_epochs = order(cfg(batch_size=1, num_epochs=2))
    assert len(two_epochs) == 2 * n == 2 * pipeline.num_batches(dpo_source, cfg(batch_size=1, num_epochs=1))
    assert two_epochs == order(cfg(batch_size=1, num_epochs=2))
    first, second = two_epochs[:n], two_epochs[n:]
    assert sorted(first) == sorted(second) and first != second
    unshuffled = order(cfg(batch_size=1, num_epochs=1, shuffle=False))
    assert sorted(unshuffled) == sorted(first) and unshuffled != first
    assert order(cfg(batch_size=1, num_epochs=1, seed=8)) != first


def test_host_slots_put_together_are_the_one_host_batches(tiny_tok_dir, dpo_source):
    """Global order: host i of n takes rows [i*b, (i+1)*b) of each global batch of n*b rows, so the
    hosts' batches side by side are exactly what one host reads with batch n*b."""
    one = take(pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), cfg(batch_size=6)), 3)
    hosts = [take(pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), cfg(batch_size=2, shard_index=i,
                                                                               shard_count=3)), 3)
             for i in range(3)]
    together = [{k: np.concatenate([h[s][k] for h in hosts]) for k in one[0]} for s in range(3)]
    assert_same_batches(one, together)
    assert pipeline.PipelineConfig(batch_size=1).shard() == (0, 1)  # one jax process here
    with pytest.raises(ValueError, match="both shard_index and shard_count"):
        pipeline.PipelineConfig(batch_size=1, shard_index=1).shard()


def test_finite_pipeline_keeps_whole_global_batches():
    ds = grain.MapDataset.source(list(range(23))).batch(2, drop_remainder=True)  # 11 host-sized batches
    slots = [list(pipeline.host_slot(ds, cfg(num_epochs=1, shard_index=i, shard_count=3))) for i in range(3)]
    assert [len(s) for s in slots] == [3, 3, 3]  # 11 // 3 whole global batches of 6 rows
    assert [x.tolist() for x in slots[1]] == [[2, 3], [8, 9], [14, 15]]
    with pytest.raises(ValueError, match="drop_remainder=True"):
        pipeline.host_slot(ds, cfg(num_epochs=1, drop_remainder=False, shard_index=0, shard_count=3))


def test_ordered_pass_host_rows_make_the_padded_global_batches(tiny_tok_dir, dpo_source):
    encode = pipeline.Encode(pipeline.ExampleEncoder(enc(tiny_tok_dir)))
    whole = list(pipeline.ordered_pass(dpo_source, 8, encode))
    assert len(dpo_source) % 8 and whole[-1][1] == len(dpo_source) % 8  # a padded last batch
    halves = [list(pipeline.ordered_pass(dpo_source, 8, encode, shard=(i, 2))) for i in range(2)]
    for (batch, n), (a, na), (b, nb) in zip(whole, *halves):
        assert n == na == nb
        for k in batch:
            np.testing.assert_array_equal(batch[k], np.concatenate([a[k], b[k]]), err_msg=k)
    last, n = whole[-1]
    for k in last:  # the padded rows repeat the batch's first row
        np.testing.assert_array_equal(last[k][n:], np.repeat(last[k][:1], 8 - n, axis=0), err_msg=k)


def test_resume_in_process(tiny_tok_dir, dpo_source):
    c = cfg()
    it = pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), c)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # JSON-able, as stored in checkpoints
    expected = take(it, 4)
    restored = pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), c)
    restored.set_state(state)
    assert_same_batches(take(restored, 4), expected)


def test_resume_with_worker_processes(tiny_tok_dir, dpo_source):
    c = cfg(num_workers=2)
    in_process = take(pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), cfg()), 7)
    it = pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), c)
    assert_same_batches(take(it, 3), in_process[:3])  # workers change nothing
    state = it.get_state()
    it.close()
    restored = pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), c)
    restored.set_state(state)
    assert_same_batches(take(restored, 4), in_process[3:])
    restored.close()


def test_orbax_checkpoint_of_the_iterator(tiny_tok_dir, dpo_source, tmp_path):
    import orbax.checkpoint as ocp

    c = cfg()
    it = pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), c)
    take(it, 2)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = take(it, 3)
    restored = pipeline.make_iterator(dpo_source, enc(tiny_tok_dir), c)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    assert_same_batches(take(restored, 3), expected)
