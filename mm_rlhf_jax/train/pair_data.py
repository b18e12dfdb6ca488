"""MM-RLHF pair files for a run from the config's `data` block: pair files, encoders, ordered eval batches.

With `data.synthetic = True` and no paths given, the bundled synthetic
MM-RLHF-format dataset (data/synthetic/mmrlhf.py) is generated into the
workdir, deterministically, so every host and every resumed run builds the
same files. The tokenizer follows data.tokenizer.resolve_tokenizer.
"""

import dataclasses

import ml_collections

from mm_rlhf_jax import storage
from mm_rlhf_jax.data import pipeline
from mm_rlhf_jax.data.example import EncoderConfig, ExampleEncoder
from mm_rlhf_jax.data.images import ImageProcessorConfig, tiny_pinpoints
from mm_rlhf_jax.data.synthetic import build_once, mmrlhf, tiny_tokenizer
from mm_rlhf_jax.data.tokenizer import resolve_tokenizer
from mm_rlhf_jax.models import hf
from mm_rlhf_jax.models.vlm import LlavaOnevisionConfig
from mm_rlhf_jax.sharding import placement


@dataclasses.dataclass(frozen=True)
class DataFiles:
    tokenizer: str
    train_pairs: str
    heldout_pairs: str
    heldout_queries: str  # data.jsonl of the held-out split ("" when unknown)
    media_root: str | None
    media_cache: str | None = None  # validation.MediaChecker's cache (workdir/media_check.json)


def prepare_files(d: ml_collections.ConfigDict, init_from: str, workdir: str) -> DataFiles:
    """The pair files named by the data block `d`, or the synthetic ones generated into workdir/data."""
    synthetic = d.synthetic and not d.train
    tokenizer = resolve_tokenizer(d.tokenizer, init_from, storage.join(workdir, "tokenizer"),
                                  tiny_tokenizer.build_tiny_tokenizer if synthetic else None)
    if synthetic:
        cfg = mmrlhf.SyntheticConfig(num_train=d.synthetic_train, num_heldout=d.synthetic_heldout,
                                     seed=d.synthetic_seed, train_hard_negatives=d.synthetic_hard_negatives,
                                     critique_style=d.synthetic_critiques)
        root = build_once(storage.join(workdir, "data"), lambda out: mmrlhf.write_dataset(out, cfg))
        split = lambda s, f: storage.join(root, s, f)
        return DataFiles(tokenizer, split("train", "dpo_pairs.jsonl"), split("heldout", "dpo_pairs.jsonl"),
                         split("heldout", "data.jsonl"), None, media_cache_path(workdir))
    if not d.train or not d.heldout:
        raise ValueError("set data.train and data.heldout (dpo_pairs.jsonl files), or data.synthetic=True")
    return DataFiles(tokenizer, d.train, d.heldout, d.heldout_queries, d.media_root or None,
                     media_cache_path(workdir))


def media_cache_path(workdir: str) -> str:
    """Where a run remembers which media files passed their check (path -> size, mtime)."""
    return storage.join(workdir, "media_check.json")


def image_config(model_config, init_from: str) -> ImageProcessorConfig | None:
    if not isinstance(model_config, LlavaOnevisionConfig):
        return None
    if init_from and hf.is_original_format(init_from):
        # A LLaVA-NeXT folder has no preprocessor_config.json: its SigLIP tower's processor is the one
        # in LLaVA-NeXT's siglip_encoder.py (mean = std = 0.5, bicubic, tiles of the tower's image size).
        t = model_config.vision.image_size
        return ImageProcessorConfig(tile_size=t, pinpoints=model_config.image_grid_pinpoints, image_mean=(0.5,) * 3,
                                    image_std=(0.5,) * 3)
    if init_from:
        return ImageProcessorConfig.from_pretrained(init_from)
    t = model_config.vision.image_size
    return ImageProcessorConfig(tile_size=t, pinpoints=tiny_pinpoints(t), image_mean=(0.5,) * 3,
                                image_std=(0.5,) * 3)


def encoder_config(d: ml_collections.ConfigDict, tokenizer: str, model_config, init_from: str, kind: str, *,
                   max_length: int = 0) -> EncoderConfig:
    """The example encoder of data block `d` for `kind` sequences (max_length > 0 overrides d.max_length)."""
    image = image_config(model_config, init_from)
    kw = {}
    if image is not None:
        kw = dict(image=image, patch_size=model_config.vision.patch_size,
                  vision_aspect_ratio=model_config.vision_aspect_ratio, max_patches=d.max_patches or None,
                  video=d.video, num_frames=d.num_frames)
    return EncoderConfig(tokenizer_path=tokenizer, max_length=max_length or d.max_length, kind=kind, **kw)


def padded_batches(source, encoder_cfg: EncoderConfig, batch_size: int, *, shard: tuple[int, int] = (0, 1)):
    """One ordered pass over the whole source (data.pipeline.ordered_pass); yields (batch, n_valid).

    The last batch is padded by repeating its first row. With the default
    shard every process holds whole batches (place them with
    placement.put_global_batch); with a host slot (placement.host_slot(...).shard)
    each process encodes only its rows (placement.put_batch).
    """
    yield from pipeline.ordered_pass(source, batch_size, pipeline.Encode(ExampleEncoder(encoder_cfg)), shard=shard)


def train_pipeline(global_batch: int, mesh, *, seed: int, num_workers: int) -> pipeline.PipelineConfig:
    """A shuffled, endless training pipeline giving this process its slot of each global batch."""
    slot = placement.host_slot(global_batch, mesh)
    return pipeline.PipelineConfig(batch_size=slot.rows, seed=seed, num_epochs=None, num_workers=num_workers,
                                   shard_index=slot.index, shard_count=slot.count)
