"""Reading and validating `data.jsonl` / `dpo_pairs.jsonl` files, media included.

`load_queries` / `load_pairs` parse every line (records.py checks the fields
and the ranking) and, with `check_media=True`, open every referenced image and
the first frame of every video folder, so an unreadable file fails at load
time with file, line and field instead of mid-training in a worker process.
"""

import json
from typing import Callable, Iterable, Iterator, TypeVar

from PIL import Image

from mm_rlhf_jax import storage
from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.records import PairRecord, QueryRecord, parse_pair, parse_query

R = TypeVar("R")

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_jsonl(path: str) -> Iterator[tuple[Where, object]]:
    """(Where, decoded object) per non-blank line; bad JSON is a DataError. `path` may be a URL."""
    with storage.open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = Where(str(path), lineno)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(where, "<json>", f"invalid JSON: {e.msg} at column {e.colno}") from None
            yield where, obj


def write_jsonl(path: str, records: Iterable) -> None:
    """One `record.to_json()` (or plain dict) per line, UTF-8, keys in schema order; written at once."""
    lines = [json.dumps(rec.to_json() if hasattr(rec, "to_json") else rec, ensure_ascii=False) + "\n"
             for rec in records]
    storage.write_atomic(path, "".join(lines))


def resolve_media(media_root: str, rel: str) -> str:
    return storage.resolve(media_root, rel)


def check_image(path: str, where: Where, field: str = "image") -> None:
    """Raise a DataError unless `path` (local or URL) is an image PIL can fully decode."""
    try:
        with storage.open(path, "rb") as f, Image.open(f) as im:
            im.load()
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for missing/corrupt files
        raise DataError(where, field, f"unreadable image {path!r}: {e}") from None


def list_frames(folder: str, where: Where = Where(), field: str = "video") -> list[str]:
    """Sorted frame files of a video frame folder (MM-RLHF stores videos this way)."""
    if not storage.isdir(folder):
        raise DataError(where, field, f"video frame folder {folder!r} does not exist")
    frames = [f for f in storage.listdir(folder) if f.lower().endswith(FRAME_EXTENSIONS)]
    frames = [f for f in frames if storage.isfile(storage.join(folder, f))]
    if not frames:
        raise DataError(where, field, f"video frame folder {folder!r} holds no frames {FRAME_EXTENSIONS}")
    return [storage.join(folder, f) for f in frames]


def check_media(rec: QueryRecord | PairRecord, media_root: str) -> None:
    if rec.image is not None:
        check_image(resolve_media(media_root, rec.image), rec.where, "image")
    if rec.video is not None:
        frames = list_frames(resolve_media(media_root, rec.video), rec.where, "video")
        check_image(frames[0], rec.where, "video")


def _load(path: str, parse: Callable[[object, Where], R], media_root: str | None, check: bool) -> list[R]:
    root = storage.dirname(path) if media_root is None else media_root
    out = []
    for where, obj in read_jsonl(path):
        rec = parse(obj, where)
        if check:
            check_media(rec, root)
        out.append(rec)
    return out


def load_queries(path: str, *, media_root: str | None = None, check_media: bool = True) -> list[QueryRecord]:
    """All query records of a `data.jsonl`; media paths resolve against `media_root` (default: its folder)."""
    return _load(path, parse_query, media_root, check_media)


def load_pairs(path: str, *, media_root: str | None = None, check_media: bool = True) -> list[PairRecord]:
    """All pair records of a `dpo_pairs.jsonl`; media paths resolve against `media_root` (default: its folder)."""
    return _load(path, parse_pair, media_root, check_media)
