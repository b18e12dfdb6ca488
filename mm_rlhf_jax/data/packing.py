"""Compact pairs (data/packed_example.py) -> packed rows of a token budget (the packed contract of data/batch.py).

    pack_rows:  best-fit decreasing: the longest pair first, each into the row
                whose free tokens it fills most tightly (within the row's token,
                pair and tile budgets), a new row when none has room;
                carried-over pairs are placed first;
    collate:    rows of pairs -> the batch arrays: per pair [prefix | chosen | rejected],
                positions 0..P-1 then P.. on both branches, segment = pair slot,
                branch 0/1/2, pred_pos (the first rejected token is predicted from
                the last prefix token), and the row's media tiles laid end to end,
                the tile axis sized to the smallest bucket that holds the fullest row.
"""

import dataclasses

import numpy as np

from mm_rlhf_jax.data.batch import PACKED_REWARD_KINDS


@dataclasses.dataclass(frozen=True)
class PackingLayout:
    """How compact pairs become packed rows.

    Attributes:
      row_length: T, tokens per row.
      pairs_per_row: K, pair slots per row.
      rows: R, rows per batch (this process's).
      kind: the encoder kind ("preference", "reward", "reward_scalar"); reward kinds add has_critique.
      pad_id: token id of padding.
      tile_buckets: ascending tile counts a batch's tile axis may take (its N is the
        smallest that holds its fullest row; a row never takes more than the last);
        () = text only (no media keys).
      tile_size: S, the square tile side in pixels.
      pixel_affine: ((scale per channel), (shift per channel)): normalised = uint8 * scale + shift.
      video: emit has_video (the model then computes pooled frame features).
      fixed_tiles: always the largest bucket (every process's batches have the same
        shape, which multi-process placement needs).
    """

    row_length: int
    pairs_per_row: int
    rows: int
    kind: str = "preference"
    pad_id: int = 0
    tile_buckets: tuple[int, ...] = ()
    tile_size: int = 0
    pixel_affine: tuple | None = None
    video: bool = False
    fixed_tiles: bool = False

    def __post_init__(self):
        if self.row_length < 2 or self.pairs_per_row < 1 or self.rows < 1:
            raise ValueError(f"packing needs row_length >= 2, pairs_per_row >= 1 and rows >= 1; got {self}")
        if list(self.tile_buckets) != sorted(set(self.tile_buckets)) or any(n < 1 for n in self.tile_buckets):
            raise ValueError(f"tile_buckets must be ascending positive tile counts, got {self.tile_buckets}")
        if self.tile_buckets and (self.tile_size < 1 or self.pixel_affine is None):
            raise ValueError("a layout with media needs tile_size and pixel_affine")

    @property
    def max_tiles(self) -> int:
        return self.tile_buckets[-1] if self.tile_buckets else 0


def pack_rows(sizes, layout: PackingLayout, *, first: int = 0) -> list[list[int]]:
    """Rows as lists of item positions (ascending) for items of (tokens, tiles) sizes; best-fit decreasing.

    first: the first `first` items are placed before the others (each group longest first), so
    items carried over from an earlier round seed rows that the rest then fill.
    """
    order = sorted(range(len(sizes)), key=lambda i: (i >= first, -sizes[i][0], i))
    free_tokens, free_tiles, rows = [], [], []
    for i in order:
        tokens, tiles = sizes[i]
        if tokens > layout.row_length or tiles > layout.max_tiles:
            raise ValueError(f"item {i} of {tokens} tokens and {tiles} tiles exceeds a row "
                             f"({layout.row_length} tokens, {layout.max_tiles} tiles)")
        best = -1
        for j in range(len(rows)):
            if free_tokens[j] >= tokens and free_tiles[j] >= tiles and len(rows[j]) < layout.pairs_per_row:
                if best < 0 or free_tokens[j] < free_tokens[best]:
                    best = j
        if best < 0:
            free_tokens.append(layout.row_length)
            free_tiles.append(layout.max_tiles)
            rows.append([])
            best = len(rows) - 1
        free_tokens[best] -= tokens
        free_tiles[best] -= tiles
        rows[best].append(i)
    return [sorted(r) for r in rows]


def _tile_axis(rows, layout: PackingLayout) -> int:
    used = max((sum(p["tiles"].shape[0] for p in row) for row in rows), default=0)
    if layout.fixed_tiles:
        return layout.max_tiles
    return next(n for n in layout.tile_buckets if n >= used)


def collate(rows, layout: PackingLayout, indices=None) -> dict[str, np.ndarray]:
    """A packed batch of `layout.rows` rows from rows of compact pairs (fewer rows: the rest are empty).

    indices: the stream index of each pair (same nesting as rows), stored as pair_index; -1 marks empty slots.
    """
    R, T, K = layout.rows, layout.row_length, layout.pairs_per_row
    if len(rows) > R:
        raise ValueError(f"{len(rows)} rows for a batch of {R}")
    i32 = lambda *s: np.zeros(s, np.int32)  # noqa: E731
    out = {"input_ids": np.full((R, T), layout.pad_id, np.int32), "positions": i32(R, T), "segment_ids": i32(R, T),
           "branch_ids": i32(R, T), "pred_pos": i32(R, T), "chosen_mask": np.zeros((R, T), np.float32),
           "rejected_mask": np.zeros((R, T), np.float32), "seq_last": i32(R, K, 2),
           "pair_valid": np.zeros((R, K), bool), "pair_index": np.full((R, K), -1, np.int32),
           "delta": np.zeros((R, K), np.float32), "ls_factor": np.zeros((R, K), np.float32), "ref_logps": np.zeros((R, K, 2), np.float32),
           "is_tie": np.zeros((R, K), bool), "query_id": i32(R, K), "category": np.full((R, K), -1, np.int32)}
    if layout.kind in PACKED_REWARD_KINDS:
        out["has_critique"] = np.zeros((R, K), bool)
    if layout.tile_buckets:
        n, s = _tile_axis(rows, layout), layout.tile_size
        out.update(pixel_values=np.zeros((R, n, 3, s, s), np.uint8),
                   pixel_affine=np.broadcast_to(np.asarray(layout.pixel_affine, np.float32), (R, 2, 3)).copy(),
                   image_sizes=i32(R, K, 2), media_offset=i32(R, K), media_tiles=i32(R, K), media_ordinal=i32(R, T))
        if layout.video:
            out["has_video"] = np.zeros((R, K), bool)
    for r, row in enumerate(rows):
        if len(row) > K:
            raise ValueError(f"row {r} holds {len(row)} pairs > pairs_per_row={K}")
        start = tile = 0
        for k, pair in enumerate(row):
            p, c, n_r = (int(x) for x in pair["lengths"])
            end = start + p + c + n_r
            if end > T:
                raise ValueError(f"row {r}: pairs need {end} tokens > row_length={T}")
            span = slice(start, end)
            out["input_ids"][r, span] = pair["ids"]
            out["positions"][r, span] = np.concatenate([np.arange(p + c), p + np.arange(n_r)])
            out["segment_ids"][r, span] = k + 1
            out["branch_ids"][r, start + p:start + p + c] = 1
            out["branch_ids"][r, start + p + c:end] = 2
            pred = np.arange(start, end) - 1
            pred[0] = start  # a pair's first token has no prediction (never scored); keep it inside the pair
            pred[p + c] = start + p - 1  # the first rejected token follows the prefix, not the chosen branch
            out["pred_pos"][r, span] = pred
            out["chosen_mask"][r, span] = pair["chosen_mask"]
            out["rejected_mask"][r, span] = pair["rejected_mask"]
            out["seq_last"][r, k] = (start + p + c - 1, end - 1)
            out["pair_valid"][r, k] = True
            out["pair_index"][r, k] = -1 if indices is None else indices[r][k]
            out["delta"][r, k] = pair["delta"]
            out["ls_factor"][r, k] = pair["ls_factor"]
            out["ref_logps"][r, k] = pair["ref_logps"]
            out["is_tie"][r, k] = pair["is_tie"]
            out["query_id"][r, k] = pair["query_id"]
            out["category"][r, k] = pair["category"]
            if "has_critique" in out:
                out["has_critique"][r, k] = pair["has_critique"]
            if layout.tile_buckets:
                m = pair["tiles"].shape[0]
                out["pixel_values"][r, tile:tile + m] = pair["tiles"]
                out["image_sizes"][r, k] = pair["image_size"]
                out["media_offset"][r, k] = tile
                out["media_tiles"][r, k] = m
                out["media_ordinal"][r, span] = pair["media_ordinal"]
                if layout.video:
                    out["has_video"][r, k] = pair["is_video"]
                tile += m
            elif pair["tiles"].shape[0]:
                raise ValueError("a pair has media but the packing layout has no tile buckets")
            start = end
    return out


def real_tokens(batch) -> int:
    """Non-padding tokens of a packed batch."""
    return int(np.count_nonzero(np.asarray(batch["segment_ids"])))
