"""The same pairs in both layouts: [B, 2, T] (the packed path's independent reference) and packed rows.

Text: random pair batches (pair_reference.pair_batch) split with packed_example.compact_tokens.
Multimodal: the bundled synthetic MM-RLHF pairs (images of 1-3 tiles, 4-frame videos) through the real
encoders (ExampleEncoder / PackedPairEncoder), on a one-layer tiny LLaVA-OV.
"""

import numpy as np

from mm_rlhf_jax import config_lib
from mm_rlhf_jax.data import packing
from mm_rlhf_jax.data.batch import validate_batch, validate_packed_batch
from mm_rlhf_jax.data.example import ExampleEncoder
from mm_rlhf_jax.data.packed_example import compact_tokens
from mm_rlhf_jax.data.sources import JsonlPairSource
from mm_rlhf_jax.train import model_factory, packed_data, pair_data


def pack(pairs, layout, order=None):
    """Packed batch of compact pairs (pack_rows), slot (r, k) -> pair position; validated."""
    rows = packing.pack_rows([(len(p["ids"]), p["tiles"].shape[0]) for p in pairs], layout)
    if order is not None:
        rows = order(rows)
    batch = packing.collate([[pairs[i] for i in row] for row in rows], layout, indices=rows)
    validate_packed_batch(batch, kind=layout.kind)
    return batch


def to_slots(batch, values):
    """Per-pair values [B, ...] -> their packed slots [R, K, ...] (0 on empty slots)."""
    values = np.asarray(values)
    out = np.zeros(batch["pair_valid"].shape + values.shape[1:], values.dtype)
    out[batch["pair_valid"]] = values[batch["pair_index"][batch["pair_valid"]]]
    return out


def from_slots(batch, slots):
    """Packed per-slot outputs [R, K, ...] -> per-pair [B, ...] in pair order."""
    slots, valid = np.asarray(slots), batch["pair_valid"]
    out = np.zeros((valid.sum(),) + slots.shape[2:], slots.dtype)
    out[batch["pair_index"][valid]] = slots[valid]
    return out


def packed_text_batch(unpacked, layout):
    """The pairs of a random [B, 2, T] text batch (input_ids, attention_mask, loss_mask, delta, ref_logps) packed."""
    pairs = []
    for i in range(unpacked["input_ids"].shape[0]):
        p = compact_tokens(unpacked["input_ids"][i], unpacked["attention_mask"][i], unpacked["loss_mask"][i])
        flag = lambda k: np.bool_(unpacked[k][i]) if k in unpacked else np.bool_(False)  # noqa: E731
        p.update(tiles=np.zeros((0, 3, 1, 1), np.uint8), image_size=np.zeros(2, np.int32), is_video=np.bool_(False),
                 delta=unpacked["delta"][i], ls_factor=unpacked["ls_factor"][i] if "ls_factor" in unpacked else np.float32(np.nan),
                 ref_logps=unpacked["ref_logps"][i], is_tie=flag("is_tie"),
                 has_critique=flag("has_critique"), query_id=np.int32(0), category=np.int32(0))
        pairs.append(p)
    return pack(pairs, layout)


class Synthetic:
    """Synthetic MM-RLHF pair files, a one-layer tiny VLM and both encoders of `kind`."""

    def __init__(self, workdir: str, *, kind: str = "preference", num_train: int = 12):
        c = config_lib.preset("reward_model" if kind != "preference" else "mm_dpo", "tiny")
        c.data.synthetic_train, c.data.synthetic_heldout = num_train, 2
        c.model.tiny.update(num_layers=1, hidden_size=64, intermediate_size=128, vision_num_layers=1)
        self.config, self.kind = c, kind
        self.files = pair_data.prepare_files(c.data, "", workdir)
        self.module, _ = model_factory.build(c.model, 0)
        self.encoder_cfg = pair_data.encoder_config(c.data, self.files.tokenizer, self.module.config, "", kind)
        self.source = JsonlPairSource(self.files.train_pairs, include_ties=kind != "preference")

    def layout(self, *, rows: int, pairs_per_row: int, row_length: int = 0):
        d = self.config.data.copy_and_resolve_references()
        d.pairs_per_row, d.pack_length = pairs_per_row, row_length
        return packed_data.packing_layout(d, self.encoder_cfg, rows=rows, fixed_tiles=False)

    def both(self, indices, layout, *, ref_seed=0):
        """(unpacked batch of the pairs at `indices`, their packed batch); both get the same random ref_logps."""
        encoder = ExampleEncoder(self.encoder_cfg)
        examples = [encoder(self.source[i]) for i in indices]
        unpacked = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        ref = np.random.default_rng(ref_seed).normal(-30, 5, (len(indices), 2)).astype(np.float32)
        unpacked["ref_logps"] = ref
        validate_batch(unpacked, kind=self.kind)
        packed_encoder = packed_data.packed_encoder(self.encoder_cfg, layout)
        pairs = [packed_encoder(self.source[i]) for i in indices]
        for p, r in zip(pairs, ref):
            p["ref_logps"] = r
        return unpacked, pack(pairs, layout)
