"""Reading and validating `data.jsonl` / `dpo_pairs.jsonl` files, media included.

`load_queries` / `load_pairs` parse every line (records.py checks the fields
and the ranking) and, with `check_media=True`, check every referenced image and
the first frame of every video folder (MediaChecker), so a missing or
unreadable file fails at load time with file, line and field instead of
mid-training in a worker process.

The check is cheap because it runs at every start on every host: an image is
opened by PIL, which reads its header (format, size) without decoding pixels;
a video folder is listed and its first frame's header read; each path is
checked once per load however many pairs share it (MM-RLHF: about 6 pairs per
query image); and with a cache file (a run's workdir) a path whose size and
mtime are unchanged since an earlier run's check is not opened again.
"""

import json
import logging
from typing import Callable, Iterable, Iterator, TypeVar

from PIL import Image

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.records import PairRecord, QueryRecord, parse_pair, parse_query
from mm_rlhf_jax.progress import Progress

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


def check_image(path: str, where: Where, field: str = "image") -> tuple[int, int]:
    """(width, height) from the header of the image at `path` (local or URL); a DataError if PIL cannot
    identify it. Pixels are not decoded (a truncated body surfaces when the encoder reads it)."""
    try:
        with storage.open(path, "rb") as f, Image.open(f) as im:
            size = im.size
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for missing/corrupt files
        raise DataError(where, field, f"unreadable image {path!r}: {e}") from None
    if min(size) < 1:
        raise DataError(where, field, f"image {path!r} has size {size}")
    return size


def list_frames(folder: str, where: Where = Where(), field: str = "video") -> list[str]:
    """Sorted frame files of a video frame folder (MM-RLHF stores videos this way)."""
    if not storage.isdir(folder):
        raise DataError(where, field, f"video frame folder {folder!r} does not exist")
    frames = [f for f in storage.listdir(folder) if f.lower().endswith(FRAME_EXTENSIONS)]
    frames = [f for f in frames if storage.isfile(storage.join(folder, f))]
    if not frames:
        raise DataError(where, field, f"video frame folder {folder!r} holds no frames {FRAME_EXTENSIONS}")
    return [storage.join(folder, f) for f in frames]


class MediaChecker:
    """Header checks of records' media, each path once, remembered across runs in a JSON cache.

    cache_path: a JSON file {path: [size, mtime]} of paths that passed (None: no cache). A path is
    checked again when its size or mtime changed. Only process 0 writes the cache (save()).
    """

    def __init__(self, cache_path: str | None = None):
        self.cache_path = cache_path
        self._passed: dict[str, list] = {}
        if cache_path and storage.exists(cache_path):
            try:
                self._passed = dict(json.loads(storage.read_text(cache_path)))
            except (ValueError, TypeError):  # a damaged cache only costs a re-check
                logging.warning("ignoring unreadable media check cache %s", cache_path)
        self._done: set[str] = set()  # checked in this load (passed, from the cache or now)
        self.opened = 0  # files whose header this checker read (the cache's hits are not counted)

    def _stat(self, path: str, where: Where, field: str, what: str) -> list:
        try:
            size, mtime = storage.stat(path)
        except (OSError, FileNotFoundError) as e:
            raise DataError(where, field, f"unreadable {what} {path!r}: {e}") from None
        return [int(size), float(mtime)]

    def image(self, path: str, where: Where, field: str = "image") -> None:
        if path in self._done:
            return
        key = self._stat(path, where, field, "image")
        if self._passed.get(path) != key:
            check_image(path, where, field)
            self.opened += 1
            self._passed[path] = key
        self._done.add(path)

    def video(self, folder: str, where: Where, field: str = "video") -> None:
        if folder in self._done:
            return
        frames = list_frames(folder, where, field)  # listed every start: frames added or removed matter
        self.image(frames[0], where, field)
        self._done.add(folder)

    def check(self, rec: QueryRecord | PairRecord, media_root: str) -> None:
        if rec.image is not None:
            self.image(resolve_media(media_root, rec.image), rec.where, "image")
        if rec.video is not None:
            self.video(resolve_media(media_root, rec.video), rec.where, "video")

    def save(self) -> None:
        if self.cache_path and distributed.is_primary():
            storage.write_atomic(self.cache_path, json.dumps(self._passed, sort_keys=True))


def check_media(rec: QueryRecord | PairRecord, media_root: str) -> None:
    """One record's media checked now (no cache): see MediaChecker."""
    MediaChecker().check(rec, media_root)


def _load(path: str, parse: Callable[[object, Where], R], media_root: str | None, check: bool,
          media_cache: str | None) -> list[R]:
    root = storage.dirname(path) if media_root is None else media_root
    checker = MediaChecker(media_cache) if check else None
    out = []
    with Progress(None, f"read {storage.basename(path)}", "records", interval_s=30) as bar:
        for where, obj in read_jsonl(path):
            rec = parse(obj, where)
            if checker is not None:
                checker.check(rec, root)
            out.append(rec)
            bar.update(1)
    if checker is not None:
        checker.save()
    return out


def load_queries(path: str, *, media_root: str | None = None, check_media: bool = True,
                 media_cache: str | None = None) -> list[QueryRecord]:
    """All query records of a `data.jsonl`; media paths resolve against `media_root` (default: its folder).

    media_cache: MediaChecker's cache file (a run's workdir/media_check.json), None for none.
    """
    return _load(path, parse_query, media_root, check_media, media_cache)


def load_pairs(path: str, *, media_root: str | None = None, check_media: bool = True,
               media_cache: str | None = None) -> list[PairRecord]:
    """All pair records of a `dpo_pairs.jsonl`; media paths resolve against `media_root` (default: its folder).

    media_cache: MediaChecker's cache file (a run's workdir/media_check.json), None for none.
    """
    return _load(path, parse_pair, media_root, check_media, media_cache)
