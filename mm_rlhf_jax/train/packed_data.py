"""Pair data for a run in either layout: the packing layout of a config's `data` block, train iterators and
ordered passes (reference precompute, evals) that work alike for [B, 2, T] and packed batches.

    layout = packing_layout(d, encoder_cfg, rows=...)            # data.pack_length / pairs_per_row / pack_tiles
    it = train_iterator(source, encoder_cfg, d, mesh)            # checkpointable, this process's shard
    for batch, index in pass_batches(source, encoder_cfg, d):   # every pair once, global batches
        out = step(params, batch).reshape(-1, 2)[index >= 0]     # the pairs' outputs, source order = index

`index` gives, for each row of the flattened per-pair output ([B] pairs, or
the R * K slots of a packed batch), the pair's source index, -1 for padding.
"""

import math

import jax
import ml_collections
import numpy as np

from mm_rlhf_jax.data import packed_pipeline, packing, pipeline
from mm_rlhf_jax.data.example import EncoderConfig
from mm_rlhf_jax.data.packed_example import PackedPairEncoder
from mm_rlhf_jax.data.tokenizer import cached_tokenizer
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.train import pair_data


def row_length(d: ml_collections.ConfigDict) -> int:
    return d.pack_length or 2 * d.max_length


def media_tiles(encoder_cfg: EncoderConfig) -> int:
    """The most tiles one pair's media can take (an image's anyres tiles, or a video's frames)."""
    if encoder_cfg.image is None:
        return 0
    return max(encoder_cfg.patches, encoder_cfg.num_frames if encoder_cfg.video else 0)


def tile_buckets(max_tiles: int, per_media: int) -> tuple[int, ...]:
    """Tile counts a batch's tile axis may take: 8, 12, 16, 24, 32, 48, ... (powers of two and 1.5x them) below
    max_tiles, then max_tiles. Each bucket is one more compiled shape; a step of 1.5 keeps the tile padding
    of a batch under a third."""
    if max_tiles == 0:
        return ()
    if max_tiles < per_media:
        raise ValueError(f"data.pack_tiles={max_tiles} is below the {per_media} tiles one image or video can take")
    out, n = {max_tiles}, 8
    while n < max_tiles:
        out.update(x for x in (n, n * 3 // 2) if x < max_tiles)
        n *= 2
    return tuple(sorted(out))


def pixel_affine(image) -> tuple:
    """(scale, shift) per channel with (x * rescale - mean) / std = x * scale + shift (data.images.normalize)."""
    mean, std = np.asarray(image.image_mean, np.float64), np.asarray(image.image_std, np.float64)
    return tuple((image.rescale_factor / std).tolist()), tuple((-mean / std).tolist())


def packing_layout(d: ml_collections.ConfigDict, encoder_cfg: EncoderConfig, *, rows: int,
                   fixed_tiles: bool | None = None) -> packing.PackingLayout:
    """The packing layout of data block d for batches of `rows` rows (fixed_tiles default: several processes)."""
    per_media = media_tiles(encoder_cfg)
    max_tiles = (d.pack_tiles or d.pairs_per_row * per_media) if per_media else 0
    image = encoder_cfg.image
    return packing.PackingLayout(
        row_length=row_length(d), pairs_per_row=d.pairs_per_row, rows=rows, kind=encoder_cfg.kind,
        pad_id=int(cached_tokenizer(encoder_cfg.tokenizer_path).pad_token_id),
        tile_buckets=tile_buckets(max_tiles, per_media), tile_size=image.tile_size if image else 0,
        pixel_affine=pixel_affine(image) if image else None, video=encoder_cfg.video,
        fixed_tiles=jax.process_count() > 1 if fixed_tiles is None else fixed_tiles)


def packed_encoder(encoder_cfg: EncoderConfig, layout: packing.PackingLayout) -> PackedPairEncoder:
    return PackedPairEncoder(encoder_cfg, row_length=layout.row_length, max_row_tiles=layout.max_tiles)


def window(d: ml_collections.ConfigDict, layout: packing.PackingLayout) -> int:
    return d.pack_window or 4 * d.pairs_per_row * layout.rows


def packed_iterator(source, encoder_cfg: EncoderConfig, d: ml_collections.ConfigDict,
                    cfg: pipeline.PipelineConfig, layout: packing.PackingLayout) -> packed_pipeline.PackedIterator:
    """Packed batches of `layout.rows` rows over source as cfg orders and shards it."""
    ds = pipeline.make_examples(source, packed_encoder(encoder_cfg, layout), cfg)
    return packed_pipeline.PackedIterator(ds, layout, window=window(d, layout), drop_remainder=cfg.drop_remainder,
                                          num_threads=cfg.read_threads)


def train_iterator(source, encoder_cfg: EncoderConfig, d: ml_collections.ConfigDict, mesh):
    """This process's training batches, repeating forever: [B, 2, T] of data.batch_size pairs, or packed rows
    of data.pack_rows (both global sizes)."""
    if not d.packing:  # global order: N processes see exactly the batches one process would
        cfg = pair_data.train_pipeline(d.batch_size, mesh, seed=d.seed, num_workers=d.num_workers)
        return pipeline.make_iterator(source, encoder_cfg, cfg)
    if d.num_workers:
        raise ValueError("data.packing encodes in threads of this process (pipeline read_threads); "
                         "set data.num_workers=0")
    # Packed: each host packs its own strided share of the examples into its slot's rows (the packer is
    # sequential over a stream, so a global order would need every host to pack every row).
    slot = placement.host_slot(d.pack_rows, mesh)
    rows = slot.rows
    cfg = pipeline.PipelineConfig(batch_size=rows, seed=d.seed, num_epochs=None, shard_index=slot.index,
                                  shard_count=slot.count)
    return packed_iterator(source, encoder_cfg, d, cfg, packing_layout(d, encoder_cfg, rows=rows))


def pass_batches(source, encoder_cfg: EncoderConfig, d: ml_collections.ConfigDict):
    """One ordered pass over the whole source (the same on every process): yields (batch, index int[N]).

    Unpacked: batches of data.eval_batch_size pairs (the last padded by repeating its first row);
    packed: data.pack_rows rows. See the module docstring for index.
    """
    if not d.packing:
        start = 0
        for batch, n in pair_data.padded_batches(source, encoder_cfg, d.eval_batch_size):
            b = batch["input_ids"].shape[0]
            yield batch, np.where(np.arange(b) < n, start + np.arange(b), -1)
            start += n
        return
    cfg = pipeline.PipelineConfig(batch_size=d.pack_rows, shuffle=False, num_epochs=1, drop_remainder=False,
                                  shard_index=0, shard_count=1)
    layout = packing_layout(d, encoder_cfg, rows=d.pack_rows)
    for batch in packed_iterator(source, encoder_cfg, d, cfg, layout):
        yield batch, np.where(batch["pair_valid"], batch["pair_index"], -1).reshape(-1)


def in_source_order(index_and_values, n: int) -> np.ndarray:
    """Per-pair outputs [(index int[N], values [N, ...]), ...] of a pass -> values [n, ...] in source order."""
    index = np.concatenate([i for i, _ in index_and_values])
    values = np.concatenate([np.asarray(v) for _, v in index_and_values])
    keep = index >= 0
    index, values = index[keep], values[keep]
    if sorted(index.tolist()) != list(range(n)):
        raise ValueError(f"a pass over {n} pairs returned {len(index)} pair outputs (indices "
                         f"{sorted(set(range(n)) - set(index.tolist()))[:5]}... missing)")
    out = np.empty((n,) + values.shape[1:], values.dtype)
    out[index] = values
    return out


def packed_waste(batch) -> float:
    """Share of a packed batch's token budget that is padding."""
    return 1.0 - packing.real_tokens(batch) / math.prod(np.asarray(batch["segment_ids"]).shape)
