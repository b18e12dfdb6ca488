"""Reference log-probs computed once and cached on disk, keyed by content hash.

DPO's reference model is frozen, so its log-probs are a function of
(reference model, example). They are computed in one pass before training
(the reference params are then dropped: no second model in memory during
training) and stored under
    <cache_dir>/<reference_id>/logps.npz      (example keys -> f32[2])
where reference_id hashes the reference's identity (checkpoint files or
random-init config + seed) and each example key hashes the example's own
content (tokens, masks, pixels). A changed tokenizer, template, image
preprocessing or checkpoint therefore misses the cache instead of silently
reusing stale numbers.

A packed batch (data/batch.py) is keyed per pair slot, from that pair's own
tokens, masks and media tiles only, so a pair has one key wherever it is
packed. Packed and unpacked keys differ (different arrays are hashed): a run
that switches data.packing computes its reference log-probs again, each
layout's numbers coming from its own forward.

Several processes (`fill`): each encodes only its rows of every global batch
(its host slot) and the reference runs on the whole mesh; keys and log-probs
are gathered to every process in global row order, so every process holds the
same table, and process 0 alone writes the file (atomically, so a crash or a
SIGKILL leaves the previous file or the new one). A resumed run loads the
file on every process and computes only the batches some pair of which is
missing.
"""

import hashlib
import io
import json
import logging

import numpy as np

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.progress import Progress
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.train import packed_data, pair_data

# Batch keys whose content identifies an example (those present are hashed).
CONTENT_KEYS = ("input_ids", "attention_mask", "loss_mask", "pixel_values", "image_sizes", "has_image",
                "pixel_values_videos", "has_video")


def reference_id(identity: dict) -> str:
    """Stable short hash of a JSON-able description of the reference model."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:20]


def checkpoint_identity(path: str) -> dict:
    """Identity of a checkpoint folder (local or URL): file names, sizes and mtimes (cheap, no reads)."""
    files = []
    for name in storage.listdir(path):
        size, mtime = storage.stat(storage.join(path, name))
        files.append((name, size, int(mtime)))
    return {"path": storage.absolute(path), "files": files}


def file_digest(path: str) -> str:
    """Content hash of one file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with storage.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:20]


# Per-token keys of a packed pair (its slot's tokens are hashed), and its media.
PACKED_TOKEN_KEYS = ("input_ids", "positions", "branch_ids", "chosen_mask", "rejected_mask", "media_ordinal")


def packed_keys(batch: dict) -> list[str]:
    """One content hash per pair slot of a packed numpy batch (R * K, row-major); "" for an empty slot."""
    seg, valid = np.asarray(batch["segment_ids"]), np.asarray(batch["pair_valid"])
    keys = []
    for r, k in np.ndindex(valid.shape):
        if not valid[r, k]:
            keys.append("")
            continue
        h = hashlib.sha1(b"packed")
        tokens = seg[r] == k + 1
        parts = [(key, np.asarray(batch[key])[r][tokens]) for key in PACKED_TOKEN_KEYS if key in batch]
        if "pixel_values" in batch:
            off, n = int(batch["media_offset"][r, k]), int(batch["media_tiles"][r, k])
            parts += [("pixel_values", np.asarray(batch["pixel_values"][r, off:off + n])),
                      ("image_sizes", np.asarray(batch["image_sizes"][r, k]))]
        for key, x in parts:
            x = np.ascontiguousarray(x)
            h.update(key.encode() + str(x.dtype).encode() + str(x.shape).encode())
            h.update(x.tobytes())
        keys.append(h.hexdigest())
    return keys


def example_keys(batch: dict) -> list[str]:
    """One content hash per example of a numpy batch (leading axis = examples; packed: per pair slot)."""
    if "pair_valid" in batch:
        return packed_keys(batch)
    n = batch["input_ids"].shape[0]
    keys = []
    for b in range(n):
        h = hashlib.sha1()
        for k in CONTENT_KEYS:
            if k in batch:
                x = np.ascontiguousarray(batch[k][b])
                h.update(k.encode())
                h.update(str(x.dtype).encode() + str(x.shape).encode())
                h.update(x.tobytes())
        keys.append(h.hexdigest())
    return keys


class ReferenceCache:
    """In-memory map example key -> f32[2] (chosen, rejected), persisted atomically as npz."""

    def __init__(self, cache_dir: str, ref_id: str):
        self.path = storage.join(cache_dir, ref_id, "logps.npz")
        self.table: dict[str, np.ndarray] = {}
        if storage.exists(self.path):
            with np.load(io.BytesIO(storage.read_bytes(self.path))) as z:
                self.table = dict(zip(z["keys"].tolist(), z["logps"]))

    def __contains__(self, key: str) -> bool:
        return key in self.table

    def __len__(self) -> int:
        return len(self.table)

    def add(self, keys, logps) -> None:
        """keys[i] -> logps[i] (f32[2]); empty keys (a packed batch's empty slots) are skipped."""
        for k, v in zip(keys, np.asarray(logps, np.float32).reshape(-1, 2)):
            if k:
                self.table[k] = v

    def save(self) -> None:
        """Writes the table (process 0 only: every process holds the same table)."""
        if not distributed.is_primary():
            return
        keys = np.array(sorted(self.table), dtype="<U40")
        buf = io.BytesIO()
        np.savez(buf, keys=keys, logps=np.stack([self.table[k] for k in keys.tolist()]) if len(keys)
                 else np.zeros((0, 2), np.float32))
        storage.write_atomic(self.path, buf.getvalue())

    def lookup(self, batch: dict) -> np.ndarray:
        """f32[B, 2] for a numpy batch (packed: f32[R, K, 2], 0 on empty slots); raises KeyError naming the
        first uncached example."""
        out = []
        for b, k in enumerate(example_keys(batch)):
            if not k:
                out.append(np.zeros(2, np.float32))
                continue
            if k not in self.table:
                raise KeyError(f"example {b} of the batch (content hash {k}) has no cached reference log-probs "
                               f"in {self.path}; the data or tokenization changed since the precompute pass")
            out.append(self.table[k])
        out = np.stack(out)
        return out.reshape(batch["pair_valid"].shape + (2,)) if "pair_valid" in batch else out


def _digests(keys: list[str]) -> np.ndarray:
    return np.array([np.frombuffer(bytes.fromhex(k), np.uint8) for k in keys])


def _unpacked_pass(source, encoder_cfg, d, mesh):
    """(host rows, device batch, finish) per global batch: each process encodes its host slot only."""
    slot = placement.host_slot(d.eval_batch_size, mesh)
    for batch, n in pair_data.padded_batches(source, encoder_cfg, d.eval_batch_size, shard=slot.shard):
        local = example_keys(batch)

        def finish(logps, local=local, n=n):  # every process: the whole batch's keys and log-probs, row order
            keys = [bytes(k).hex() for k in placement.gather_rows(_digests(local), mesh)][:n]
            return keys, logps[:n]

        yield local, lambda batch=batch: placement.put_batch(batch, mesh), finish


def _packed_pass(source, encoder_cfg, d, mesh):
    """As _unpacked_pass for packed rows: every process packs the whole pass (the packer is sequential)."""
    for batch, index in packed_data.pass_batches(source, encoder_cfg, d):
        keys = [k for k, i in zip(example_keys(batch), index) if i >= 0]
        yield keys, lambda batch=batch: placement.put_global_batch(batch, mesh), \
            lambda logps, keys=keys, index=index: (keys, logps.reshape(-1, 2)[index >= 0])


def fill(cache: ReferenceCache, logps_fn, params_fn, sources, encoder_cfg, d, mesh) -> int:
    """Computes and stores reference log-probs for every uncached pair of `sources`; returns how many.

    d: the data block (its layout: [B, 2, T] batches of d.eval_batch_size pairs, or packed rows).
    logps_fn(params, device batch) -> f32[B, 2] (packed: f32[R, K, 2]) row-sharded; params_fn() -> the
    reference's parameters, called (on every process at once) only when some batch is missing. Every
    process calls fill with the same arguments.
    """
    passes = _packed_pass if d.packing else _unpacked_pass
    params, added = None, 0
    # Progress over every pair of every source (cached ones pass quickly): pairs/s and the time left. The
    # packed pass counts the pairs each batch holds; the unpacked one eval_batch_size per batch (the last
    # batch's padding repeats are not counted twice: the bar stops at the total).
    total = sum(len(s) for s in sources)
    with Progress(total, "reference log-probs", "pairs") as bar:
        for source in sources:
            left = len(source)
            for local_keys, put, finish in passes(source, encoder_cfg, d, mesh):
                if not placement.any_process(not all(k in cache for k in local_keys)):
                    step = min(left, d.eval_batch_size) if not d.packing else len(local_keys)
                    left -= step
                    bar.update(step)
                    continue
                if params is None:
                    logging.info("computing reference log-probs into %s", cache.path)
                    params = params_fn()
                keys, logps = finish(placement.fetch(logps_fn(params, put())))
                cache.add(keys, logps)
                added += len(keys)
                left -= len(keys)
                bar.update(len(keys))
                bar.set_postfix({"computed": added})
    if added:
        cache.save()
        distributed.barrier("reference_cache")
        logging.info("cached reference log-probs for %d pairs", added)
    return added
