"""The one path layer: every file a run reads or writes goes through here, local paths and URLs alike.

A path is either local (`runs/x`, `/data/pairs.jsonl`) or a URL (`gs://bucket/x`,
`s3://...`, `memory://...`: any fsspec protocol). Local paths go to the os
module; URLs go to fsspec unchanged (gs:// needs `gcsfs`, s3:// `s3fs`: the
`gcs` extra of setup.py installs what GCS needs). Nothing here, and nothing
that uses it, calls os.path on a URL, so `gs://BUCKET/x` never becomes a local
`./gs:/BUCKET/x`.

    storage.join(workdir, "eval.json")        # URL-aware join
    storage.write_atomic(path, data)          # readers see the old file or the new one, never half
    with storage.open(path) as f: ...         # text or binary, local or remote
    storage.local_copy(url)                   # a local folder for libraries that need one (tokenizers,
                                              # HF checkpoints): copied once into the local cache

Orbax checkpoints take `absolute(path)`: a URL unchanged (orbax writes gs://
itself, through tensorstore), a local path made absolute (orbax requires that).

Object stores have no append and no atomic folder rename, so the two write
patterns a run needs are built from whole-object writes: `write_atomic` (one
object replaced at once) and `Appender` (an append-only file: real appends
locally, a periodic whole-object rewrite on a URL). Folders built by several
files at once are built locally and then uploaded (`upload_tree`), with a
marker written last (see data.synthetic.build_once).

The local cache for URL copies is $MM_RLHF_JAX_CACHE (default
~/.cache/mm_rlhf_jax); each URL gets a folder named by its hash, filled
through a temporary sibling and a rename, so concurrent processes on one host
never read half a copy.
"""

import builtins
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
import time
import uuid

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path: str) -> bool:
    return bool(_URL.match(str(path)))


def _fs(url: str):
    """(fsspec filesystem, path inside it) of a URL."""
    import fsspec

    return fsspec.core.url_to_fs(url)


# Object stores keep folders as key prefixes: nothing to create before a write.
_OBJECT_STORES = frozenset({"gs", "gcs", "s3", "s3a", "az", "abfs"})


def _makedirs(url: str, fs, inner: str) -> None:
    if url.split("://", 1)[0] not in _OBJECT_STORES:
        fs.makedirs(inner, exist_ok=True)


# ------------------------------------------------------------------------------------------------ names


def join(base: str, *parts: str) -> str:
    if is_url(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return os.path.join(base, *parts)


def dirname(path: str) -> str:
    if is_url(path):
        scheme, rest = path.rstrip("/").split("://", 1)
        return f"{scheme}://" + posixpath.dirname(rest)
    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def absolute(path: str) -> str:
    """A URL unchanged, a local path made absolute (what orbax and cache identities need)."""
    return path if is_url(path) else os.path.abspath(path)


def resolve(root: str, rel: str) -> str:
    """`rel` (a media path from a record) against `root`, unless it is absolute or a URL itself."""
    if is_url(rel) or os.path.isabs(rel):
        return rel
    return join(root, rel)


# ---------------------------------------------------------------------------------------------- queries


def exists(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.exists(p)
    return os.path.exists(path)


def isdir(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.isdir(p)
    return os.path.isdir(path)


def isfile(path: str) -> bool:
    if is_url(path):
        fs, p = _fs(path)
        return fs.isfile(p)
    return os.path.isfile(path)


def listdir(path: str) -> list[str]:
    """Sorted entry names of a folder."""
    if is_url(path):
        fs, p = _fs(path)
        return sorted({posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False)} - {""})
    return sorted(os.listdir(path))


def stat(path: str) -> tuple[int, float]:
    """(size in bytes, modification time in seconds; 0 where the store keeps none)."""
    if is_url(path):
        fs, p = _fs(path)
        size = int(fs.info(p).get("size") or 0)
        try:
            mtime = fs.modified(p).timestamp()
        except (NotImplementedError, AttributeError, OSError, ValueError):  # a store without times
            mtime = 0.0
        return size, mtime
    st = os.stat(path)
    return st.st_size, st.st_mtime


# ----------------------------------------------------------------------------------------------- writes


def makedirs(path: str) -> None:
    if is_url(path):
        fs, p = _fs(path)
        _makedirs(path, fs, p)
    else:
        os.makedirs(path, exist_ok=True)


def open(path: str, mode: str = "r", encoding: str | None = None):  # noqa: A001 (the layer's own open)
    """A file object; text modes default to UTF-8. URLs support r/w modes (object stores have no append)."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    if is_url(path):
        if "a" in mode or "+" in mode:
            raise ValueError(f"{path}: mode {mode!r} is not available on object stores; use storage.Appender")
        fs, p = _fs(path)
        if "w" in mode:
            _makedirs(path, fs, posixpath.dirname(p))
        return fs.open(p, mode, encoding=encoding) if "b" not in mode else fs.open(p, mode)
    if "w" in mode or "a" in mode:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return builtins.open(path, mode, encoding=encoding)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_atomic(path: str, data: bytes | str) -> None:
    """Replaces `path` at once: locally a temporary sibling + rename; on a URL one object write."""
    write_atomic_chunks(path, [data])


def write_atomic_chunks(path: str, chunks) -> None:
    """write_atomic of the concatenated `chunks` (str or bytes), never holding them all in memory.

    Locally a temporary sibling + rename; on a URL one streamed object upload
    (an object store publishes an object only when its upload completes).
    """
    encode = lambda c: c.encode("utf-8") if isinstance(c, str) else bytes(c)
    if is_url(path):
        fs, p = _fs(path)
        _makedirs(path, fs, posixpath.dirname(p))
        with fs.open(p, "wb") as f:
            for c in chunks:
                f.write(encode(c))
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_")
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(encode(c))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove(path: str) -> None:
    if is_url(path):
        fs, p = _fs(path)
        fs.rm(p, recursive=True)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def upload_tree(local_dir: str, dst: str) -> None:
    """Copies a local folder's files to `dst` (a URL), file by file, folders as key prefixes."""
    for root, _, files in os.walk(local_dir):
        rel = os.path.relpath(root, local_dir)
        for name in sorted(files):
            target = join(dst, name) if rel == "." else join(dst, *rel.split(os.sep), name)
            with builtins.open(os.path.join(root, name), "rb") as f:
                write_atomic(target, f.read())


def download_tree(src: str, local_dir: str) -> None:
    """Copies every file under `src` (a URL folder) into local_dir, keeping the layout."""
    fs, p = _fs(src)
    prefix = p.rstrip("/") + "/"
    for inner in sorted(fs.find(p)):
        rel = inner[len(prefix):] if inner.startswith(prefix) else posixpath.basename(inner)
        out = os.path.join(local_dir, *rel.split("/"))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with fs.open(inner, "rb") as f, builtins.open(out, "wb") as g:
            shutil.copyfileobj(f, g)


def cache_root() -> str:
    return os.environ.get("MM_RLHF_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mm_rlhf_jax")


def local_copy(path: str) -> str:
    """A local folder (or file) with the content of `path`: the path itself when local, else a cached copy.

    For libraries that read only local files (transformers tokenizers,
    safetensors). The copy is keyed by the URL and its listing (names, sizes,
    times), so it is made once per host and content; changed content gets a
    fresh copy.
    """
    if not is_url(path):
        return path
    fs, p = _fs(path)
    listing = sorted((k, v.get("size"), str(v.get("mtime") or v.get("updated") or ""))
                     for k, v in fs.find(p, detail=True, withdirs=False).items()) if isdir(path) else \
        [(p, *stat(path))]
    key = hashlib.sha256(json.dumps([path, listing], default=str).encode()).hexdigest()[:24]
    target = os.path.join(cache_root(), key, basename(path) or "root")
    if os.path.exists(target):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}")
    if isdir(path):
        download_tree(path, tmp)
    else:
        with builtins.open(tmp, "wb") as f:
            f.write(read_bytes(path))
    try:
        os.rename(tmp, target)
    except OSError:  # another process of this host finished first; its copy is the same
        remove(tmp)
    return target


class Appender:
    """An append-only text file (metrics.jsonl, samples.jsonl) that also lives on object stores.

    Locally: a file opened for appending, flushed on every write. On a URL:
    the file's earlier content (a resumed run) plus everything written since,
    rewritten as one object at most every `flush_secs` and on close, so a
    crash loses at most that many seconds of lines.
    """

    def __init__(self, path: str, *, flush_secs: float = 30.0):
        self.path, self.flush_secs = path, flush_secs
        self._remote = is_url(path)
        if self._remote:
            self._buffer = io.StringIO()
            if exists(path):
                self._buffer.write(read_text(path))
            self._dirty, self._last = False, time.monotonic()
        else:
            self._file = open(path, "a")

    def write(self, text: str) -> None:
        if not self._remote:
            self._file.write(text)
            self._file.flush()
            return
        self._buffer.write(text)
        self._dirty = True
        if time.monotonic() - self._last >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        if self._remote and self._dirty:
            write_atomic(self.path, self._buffer.getvalue())
            self._dirty, self._last = False, time.monotonic()

    def close(self) -> None:
        if self._remote:
            self.flush()
        else:
            self._file.close()
