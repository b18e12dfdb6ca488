"""Random-access sources of pair elements, for grain's `MapDataset.source`.

An element is a dict::

    {"record": PairRecord,              # text fields, flags, cached logps, provenance (file, line)
     "query_id": int,                   # index of record.id among the source's ids, in first-seen order
     "media_root": str,                 # folder that record.image / record.video are relative to
     "image": uint8[H, W, 3] | None,    # decoded pixels when the source stores them (tfds), else None
     "video": uint8[N, H, W, 3] | None} # all stored frames (tfds), else None

`ExampleEncoder` (example.py) turns an element into arrays; media given as
pixels are used as is, media given as paths are read from `media_root`.
"""


from mm_rlhf_jax import storage
from mm_rlhf_jax.data.records import PairRecord
from mm_rlhf_jax.data.validation import load_pairs


def query_index(ids) -> dict[str, int]:
    """id -> index in order of first appearance (stable, so every host numbers queries alike)."""
    out: dict[str, int] = {}
    for i in ids:
        out.setdefault(i, len(out))
    return out


class RecordPairSource:
    """In-memory pair records (e.g. pairs whose critiques were just generated), same elements as JsonlPairSource."""

    def __init__(self, records, media_root: str, query_ids=None):
        self._records = list(records)
        self.media_root = media_root
        qids = query_index(r.id for r in self._records)
        self._qids = list(query_ids) if query_ids is not None else [qids[r.id] for r in self._records]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        return {"record": self._records[index], "query_id": self._qids[index], "media_root": self.media_root,
                "image": None, "video": None}

    @property
    def records(self) -> list[PairRecord]:
        return list(self._records)


class JsonlPairSource(RecordPairSource):
    """The pairs of a `dpo_pairs.jsonl`, validated at construction.

    Args:
      path: the jsonl file.
      include_ties: keep `is_tie` pairs (reward-model data) or drop them (DPO data).
      media_root: folder media paths are relative to (default: the file's folder).
      check_media: check every image / first video frame's header now rather than fail in a worker.
      media_cache: the media check's cache file (validation.MediaChecker; None: none).
    """

    def __init__(self, path: str, *, include_ties: bool, media_root: str | None = None, check_media: bool = True,
                 media_cache: str | None = None):
        self.path = path
        media_root = storage.dirname(path) if media_root is None else media_root
        records = load_pairs(path, media_root=media_root, check_media=check_media, media_cache=media_cache)
        qids = query_index(r.id for r in records)  # numbered before tie filtering: same ids either way
        kept = [r for r in records if include_ties or not r.is_tie]
        if not kept:
            raise ValueError(f"{path}: no pairs left (include_ties={include_ties}, {len(records)} pairs in file)")
        super().__init__(kept, media_root, query_ids=[qids[r.id] for r in kept])

    def __repr__(self) -> str:
        return f"JsonlPairSource({self.path!r}, {len(self)} pairs)"
