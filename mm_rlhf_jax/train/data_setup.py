"""Data for a run from the config's `data` block: tokenizer, pair files, encoders, batch placement.

With `data.synthetic = True` and no paths given, the bundled synthetic
MM-RLHF-format dataset and the tiny tokenizer are generated into the workdir
(deterministically, so every host and every resumed run builds the same files).
"""

import dataclasses
import os
import tempfile

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mm_rlhf_jax.data import pipeline
from mm_rlhf_jax.data.example import EncoderConfig
from mm_rlhf_jax.data.images import ImageProcessorConfig, tiny_pinpoints
from mm_rlhf_jax.models.vlm import LlavaOnevisionConfig
from mm_rlhf_jax.sharding.mesh import BATCH_AXES, batch_size_divisor
from mm_rlhf_jax.data.synthetic import mmrlhf as synthetic_mmrlhf, tiny_tokenizer


@dataclasses.dataclass(frozen=True)
class DataFiles:
    tokenizer: str
    train_pairs: str
    heldout_pairs: str
    heldout_queries: str  # data.jsonl of the held-out split ("" when unknown)
    media_root: str | None


def _build_once(path: str, build) -> str:
    """Builds a folder via a temporary sibling + rename, so concurrent hosts never see half of it."""
    if os.path.exists(path):
        return path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp_")
    build(tmp)
    try:
        os.rename(tmp, path)
    except OSError:  # another host got there first; its copy is identical
        pass
    return path


def prepare_files(c: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict, workdir: str) -> DataFiles:
    tokenizer = c.tokenizer or model_cfg.init_from
    if not tokenizer:
        tokenizer = _build_once(os.path.join(workdir, "tokenizer"), tiny_tokenizer.build_tiny_tokenizer)
    if c.synthetic and not c.train:
        cfg = synthetic_mmrlhf.SyntheticConfig(num_train=c.synthetic_train, num_heldout=c.synthetic_heldout,
                                               seed=c.synthetic_seed,
                                               train_hard_negatives=c.synthetic_hard_negatives,
                                               critique_style=c.synthetic_critiques)
        root = _build_once(os.path.join(workdir, "data"), lambda d: synthetic_mmrlhf.write_dataset(d, cfg))
        split = lambda s, f: os.path.join(root, s, f)
        return DataFiles(tokenizer, split("train", "dpo_pairs.jsonl"), split("heldout", "dpo_pairs.jsonl"),
                         split("heldout", "data.jsonl"), None)
    if not c.train or not c.heldout:
        raise ValueError("set data.train and data.heldout (dpo_pairs.jsonl files), or data.synthetic=True")
    return DataFiles(tokenizer, c.train, c.heldout, c.heldout_queries, c.media_root or None)


def image_config(model_config, model_block: ml_collections.ConfigDict) -> ImageProcessorConfig | None:
    if not isinstance(model_config, LlavaOnevisionConfig):
        return None
    if model_block.init_from:
        return ImageProcessorConfig.from_pretrained(model_block.init_from)
    t = model_config.vision.image_size
    return ImageProcessorConfig(tile_size=t, pinpoints=tiny_pinpoints(t), image_mean=(0.5,) * 3,
                                image_std=(0.5,) * 3)


def encoder_config(c: ml_collections.ConfigDict, files: DataFiles, model_config, model_block, kind: str):
    image = image_config(model_config, model_block)
    kw = {}
    if image is not None:
        kw = dict(image=image, patch_size=model_config.vision.patch_size,
                  vision_aspect_ratio=model_config.vision_aspect_ratio, max_patches=c.max_patches or None,
                  video=c.video, num_frames=c.num_frames)
    return EncoderConfig(tokenizer_path=files.tokenizer, max_length=c.max_length, kind=kind, **kw)


def per_host_batch(global_batch: int, mesh: Mesh) -> int:
    divisor = batch_size_divisor(mesh)
    if global_batch % divisor or global_batch % jax.process_count():
        raise ValueError(f"global batch size {global_batch} must divide evenly over the mesh's batch axes "
                         f"({dict((a, mesh.shape[a]) for a in BATCH_AXES)}, total {divisor}) and "
                         f"{jax.process_count()} processes")
    return global_batch // jax.process_count()


def batch_shardings(batch: dict, mesh: Mesh) -> dict:
    return {k: NamedSharding(mesh, P(BATCH_AXES, *([None] * (np.ndim(v) - 1)))) for k, v in batch.items()}


def put_batch(batch: dict, mesh: Mesh) -> dict:
    """Host-local numpy batch -> global jax arrays sharded over the batch axes."""
    shardings = batch_shardings(batch, mesh)
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v)) for k, v in batch.items()}


def padded_batches(source, encoder_cfg: EncoderConfig, batch_size: int):
    """One ordered pass; the last batch is padded by repeating its first row. Yields (batch, n_valid)."""
    cfg = pipeline.PipelineConfig(batch_size=batch_size, shuffle=False, num_epochs=1, drop_remainder=False)
    for batch in pipeline.make_iterator(source, encoder_cfg, cfg):
        n = batch["input_ids"].shape[0]
        if n < batch_size:
            idx = np.concatenate([np.arange(n), np.zeros(batch_size - n, int)])
            batch = {k: np.asarray(v)[idx] for k, v in batch.items()}
        yield batch, n


def data_block(**overrides) -> ml_collections.ConfigDict:
    d = dict(
        train="",  # dpo_pairs.jsonl for training ("" + synthetic=True: generate into the workdir)
        heldout="",  # dpo_pairs.jsonl for held-out evaluation
        heldout_queries="",  # data.jsonl of held-out queries (generation evals)
        media_root="",  # folder media paths are relative to ("" = each jsonl's folder)
        tokenizer="",  # local tokenizer folder ("" = model.init_from, or the tiny tokenizer)
        synthetic=True,
        synthetic_train=256,
        synthetic_heldout=64,
        synthetic_seed=0,
        synthetic_hard_negatives=False,  # train queries get a 5th response: the terse wrong answer
        synthetic_critiques="answer_first",  # teacher critique wording (data/synthetic/mmrlhf_texts.py)
        max_length=128,
        max_patches=3,  # P: tiles per image incl. the base tile (0 = the processor's maximum)
        video=True,
        num_frames=4,  # frames sampled per video (MM-RLHF: 10)
        batch_size=16,  # global, in pairs
        eval_batch_size=16,
        num_workers=0,
        seed=0,
    )
    d.update(overrides)
    return ml_collections.ConfigDict(d)
