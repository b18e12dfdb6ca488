import numpy as np
import pytest

from mm_rlhf_jax.train.reference_cache import ReferenceCache, example_keys, reference_id


def _batch(seed):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 50, (3, 2, 8)), "loss_mask": np.ones((3, 2, 8), np.float32),
            "pixel_values": rng.normal(size=(3, 2, 3, 4, 4)).astype(np.float32)}


def test_keys_depend_on_content_and_cache_round_trips(tmp_path):
    b = _batch(0)
    keys = example_keys(b)
    assert len(set(keys)) == 3
    b2 = {k: v.copy() for k, v in b.items()}
    b2["pixel_values"][1, 0, 0, 0, 0] += 1.0  # same tokens, different image -> different key
    assert example_keys(b2)[1] != keys[1] and example_keys(b2)[0] == keys[0]
    rid = reference_id({"init_from": "x", "seed": 0})
    cache = ReferenceCache(str(tmp_path), rid)
    cache.add(keys, [[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])
    cache.save()
    again = ReferenceCache(str(tmp_path), rid)
    np.testing.assert_array_equal(again.lookup(b), [[-1, -2], [-3, -4], [-5, -6]])
    with pytest.raises(KeyError, match="example 1 .* no cached reference"):
        again.lookup(b2)
    assert reference_id({"seed": 0, "init_from": "x"}) == rid != reference_id({"init_from": "x", "seed": 1})
