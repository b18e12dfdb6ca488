"""A local stand-in for Google Cloud Storage: gs:// URLs served from a folder, for tests without GCS access.

Three clients reach GCS during a run; each is pointed at the same folder (gs://BUCKET/KEY is ROOT/BUCKET/KEY):

  fsspec "gs" / "gcs"       the path layer (mm_rlhf_jax.storage) and etils.epath, so orbax's step
                            folders and metadata: FakeGCSFileSystem, registered in place of gcsfs
  tensorstore's gcs driver  orbax's array data: an HTTP server answering the part of the GCS JSON API
                            tensorstore uses (objects: read with ranges and generation conditions, upload,
                            delete, list), reached through TENSORSTORE_GCS_HTTP_URL
  google.cloud.storage      orbax asks whether a bucket has a hierarchical namespace: a stub client that
                            answers no

    with fake_gcs.serve(root):
        run(config, "gs://bucket/run")      # everything lands under root/bucket/run

Every HTTP request is recorded (`FakeGCS.requests`), so a test can check that array data really went
through the gs:// path. Generations are the files' modification times in nanoseconds.
"""

import contextlib
import http.server
import importlib
import json
import os
import sys
import threading
import types
import urllib.parse

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

fsspec_registry = importlib.import_module("fsspec.registry")  # the module (fsspec.registry is a read-only view)

ROOT_ENV = "MM_RLHF_JAX_FAKE_GCS_ROOT"


class FakeGCSFileSystem(DirFileSystem):
    """fsspec filesystem for gs:// over the folder $MM_RLHF_JAX_FAKE_GCS_ROOT (paths come back as bucket/key)."""

    protocol = ("gs", "gcs")
    cachable = False

    def __init__(self, *args, **kwargs):
        super().__init__(path=os.environ[ROOT_ENV], fs=LocalFileSystem(auto_mkdir=True))

    # The root is read at each call: clients cache filesystem instances (etils.epath does) across serve() blocks.
    @property
    def path(self) -> str:
        return os.environ[ROOT_ENV]

    @path.setter
    def path(self, value) -> None:
        pass

    @classmethod
    def _strip_protocol(cls, path):
        path = path[0] if isinstance(path, list) else path
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return path.rstrip("/")


def _generation(path: str) -> int:
    return os.stat(path).st_mtime_ns


def _metadata(bucket: str, name: str, path: str) -> dict:
    return {"kind": "storage#object", "bucket": bucket, "name": name, "generation": str(_generation(path)),
            "metageneration": "1", "size": str(os.path.getsize(path))}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "FakeGCS"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    # ------------------------------------------------------------------------------------------ helpers

    def _parse(self):
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        parts = url.path.split("/")
        return parts, query

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, ctype="application/json"):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if code not in (204, 304):
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Content-Length", "0")
        self.end_headers()
        if code not in (204, 304) and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj, headers=None):
        self._send(code, json.dumps(obj).encode(), headers)

    def _error(self, code: int, message: str):
        self._json(code, {"error": {"code": code, "message": message}})

    def _object_path(self, bucket: str, name: str) -> str:
        return os.path.join(self.server.root, bucket, *name.split("/"))

    def _preconditions(self, query, path) -> int | None:
        """HTTP status of a failed generation precondition, or None."""
        exists = os.path.isfile(path)
        gen = _generation(path) if exists else 0
        if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != gen:
            return 412
        if "ifGenerationNotMatch" in query and exists and int(query["ifGenerationNotMatch"]) == gen:
            return 304
        return None

    # ------------------------------------------------------------------------------------------ verbs

    def do_GET(self):
        self.server.record(self.command, self.path)
        parts, query = self._parse()
        # /storage/v1/b/{bucket}/o/{object} or /storage/v1/b/{bucket}/o (list) or /storage/v1/b/{bucket}
        if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 5:
            return self._error(404, f"unknown path {self.path}")
        bucket = parts[4]
        if len(parts) == 5:
            return self._json(200, {"kind": "storage#bucket", "name": bucket})
        if len(parts) == 6 and parts[5] == "o":
            return self._list(bucket, query)
        name = urllib.parse.unquote("/".join(parts[6:]))
        path = self._object_path(bucket, name)
        if not os.path.isfile(path):
            return self._error(404, f"no such object {bucket}/{name}")
        failed = self._preconditions(query, path)
        if failed:
            return self._send(failed, headers={"x-goog-generation": str(_generation(path))})
        if query.get("alt") != "media":
            return self._json(200, _metadata(bucket, name, path))
        with open(path, "rb") as f:
            data = f.read()
        headers = {"x-goog-generation": str(_generation(path)), "x-goog-metageneration": "1"}
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start_s, _, end_s = rng[len("bytes="):].partition("-")
            if start_s == "":  # suffix range
                start, end = max(len(data) - int(end_s), 0), len(data) - 1
            else:
                start, end = int(start_s), (int(end_s) if end_s else len(data) - 1)
            if start >= len(data) and len(data) > 0:
                return self._send(416, headers=headers)
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        return self._send(200, data, headers, "application/octet-stream")

    do_HEAD = do_GET

    def _list(self, bucket: str, query):
        prefix = query.get("prefix", "")
        start, end = query.get("startOffset", ""), query.get("endOffset", "")
        base = os.path.join(self.server.root, bucket)
        names = []
        for root, _, files in os.walk(base):
            for f in files:
                name = os.path.relpath(os.path.join(root, f), base).replace(os.sep, "/")
                if name.startswith(prefix) and name >= start and (not end or name < end):
                    names.append(name)
        names.sort()
        token = query.get("pageToken", "")
        names = [n for n in names if n > token] if token else names
        page, rest = names[:1000], names[1000:]
        out = {"kind": "storage#objects", "items": [_metadata(bucket, n, os.path.join(base, *n.split("/")))
                                                     for n in page]}
        if rest:
            out["nextPageToken"] = page[-1]
        self._json(200, out)

    def do_POST(self):
        self.server.record(self.command, self.path)
        parts, query = self._parse()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        # /upload/storage/v1/b/{bucket}/o?uploadType=media&name=...
        if parts[1:5] != ["upload", "storage", "v1", "b"] or query.get("uploadType") != "media":
            return self._error(400, f"unsupported upload {self.path}")
        bucket, name = parts[5], query["name"]
        path = self._object_path(bucket, name)
        failed = self._preconditions(query, path)
        if failed:
            return self._error(412 if failed == 412 else 304, "precondition failed")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.upload-{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, path)
        self._json(200, _metadata(bucket, name, path))

    def do_DELETE(self):
        self.server.record(self.command, self.path)
        parts, query = self._parse()
        if parts[1:4] != ["storage", "v1", "b"] or len(parts) < 7:
            return self._error(404, f"unknown path {self.path}")
        bucket, name = parts[4], urllib.parse.unquote("/".join(parts[6:]))
        path = self._object_path(bucket, name)
        if not os.path.isfile(path):
            return self._error(404, f"no such object {bucket}/{name}")
        failed = self._preconditions(query, path)
        if failed:
            return self._error(412, "precondition failed")
        os.remove(path)
        self._send(204)


class FakeGCS(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


def _storage_stub() -> types.ModuleType:
    """google.cloud.storage with just what orbax's hierarchical-namespace check calls."""
    module = types.ModuleType("google.cloud.storage")

    class Client:
        def get_bucket(self, name):
            return types.SimpleNamespace(name=name, hierarchical_namespace_enabled=False)

    module.Client = Client
    return module


@contextlib.contextmanager
def serve(root: str):
    """Serves gs:// from `root` to fsspec, tensorstore and google.cloud.storage for the block; yields the server."""
    os.makedirs(root, exist_ok=True)
    server = FakeGCS(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    saved_env = {k: os.environ.get(k) for k in (ROOT_ENV, "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING")}
    os.environ.update({ROOT_ENV: root, "TENSORSTORE_GCS_HTTP_URL": server.url,
                       "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token"})
    saved_fs = {p: fsspec_registry._registry.get(p) for p in FakeGCSFileSystem.protocol}
    for p in FakeGCSFileSystem.protocol:
        fsspec.register_implementation(p, FakeGCSFileSystem, clobber=True)
    saved_mods = {k: sys.modules.get(k) for k in ("google.cloud", "google.cloud.storage")}
    if saved_mods["google.cloud"] is None:
        sys.modules["google.cloud"] = types.ModuleType("google.cloud")
    sys.modules["google.cloud.storage"] = stub = _storage_stub()
    sys.modules["google.cloud"].storage = stub
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for p, cls in saved_fs.items():
            if cls is None:
                fsspec_registry._registry.pop(p, None)
            else:
                fsspec.register_implementation(p, cls, clobber=True)
        for k, v in saved_mods.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
