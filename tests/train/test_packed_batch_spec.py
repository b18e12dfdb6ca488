"""The abstract packed batch (ahead-of-time compiles) has the keys, dtypes and shapes of the pipeline's packed
batches, and the MM-DPO train step lowers on it exactly as run() builds it."""

import numpy as np

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.algorithms.mm_dpo import spec
from mm_rlhf_jax.data.sources import JsonlPairSource
from mm_rlhf_jax.sharding import TRAIN_RULES, make_mesh
from mm_rlhf_jax.train import batch_spec, model_factory, packed_data, pair_data


def test_abstract_packed_batch_matches_the_pipeline_and_lowers_the_train_step(tmp_path):
    c = config_lib.preset("mm_dpo", "tiny")
    c.data.synthetic_train, c.data.synthetic_heldout = 8, 2
    c.data.packing, c.data.pack_rows, c.data.pairs_per_row = True, 8, 3
    mesh = make_mesh(c.mesh.to_dict())
    module, _ = model_factory.build(c.model, 0)
    files = pair_data.prepare_files(c.data, "", str(tmp_path))
    encoder_cfg = pair_data.encoder_config(c.data, files.tokenizer, module.config, "", "preference")
    source = JsonlPairSource(files.train_pairs, include_ties=False)
    batch = next(packed_data.train_iterator(source, encoder_cfg, c.data, mesh))
    abstract = batch_spec.preference_batch(c.data, module.config, mesh)
    assert sorted(abstract) == sorted(batch)
    for k, v in batch.items():
        assert np.dtype(abstract[k].dtype) == v.dtype, k
        if k == "pixel_values":  # the abstract batch takes the largest tile bucket
            assert abstract[k].shape[1] >= v.shape[1] and abstract[k].shape[1] == 3 * 4  # 3 slots x 4 video frames
            assert abstract[k].shape[:1] + abstract[k].shape[2:] == v.shape[:1] + v.shape[2:]
        else:
            assert abstract[k].shape == v.shape, k
    assert abstract["input_ids"].shape == (8, 2 * c.data.max_length)
    fn, args = spec.compile_inputs(c, mesh, TRAIN_RULES, "train")
    text = fn.lower(*args).as_text()
    assert "tensor<8x256xi32>" in text and "tensor<8x12x3x32x32xui8>" in text  # packed rows, uint8 tiles in
