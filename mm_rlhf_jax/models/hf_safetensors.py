"""Minimal streaming safetensors reader and writer (numpy + memory maps).

Reading memory-maps each file and returns lazy numpy views, so a loader
touches only the bytes of the slices it asks for (bf16 / fp8 via ml_dtypes,
which numpy alone lacks). Writing streams one tensor at a time into files
sharded by size, with transformers' `model.safetensors.index.json`.

Format: u64 little-endian header length N, N bytes of JSON
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
then the raw little-endian tensor bytes (offsets relative to the data start).
"""

import json
import os
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def _read_header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header, 8 + n


class CheckpointReader:
    """All tensors of a checkpoint folder (single file or sharded with an index), lazily."""

    def __init__(self, folder: str, files: list[str] | None = None):
        """files: the file names to read (default: the index's files, else the folder's model*.safetensors;
        other safetensors files, such as an exported reward head, are not part of the model)."""
        self.folder = folder
        index = os.path.join(folder, INDEX_NAME)
        if files is not None:
            files = list(files)
        elif os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors") and n.startswith("model"))
        if not files:
            raise FileNotFoundError(f"no model*.safetensors files in {folder}")
        self._entries: dict[str, tuple[str, dict, int]] = {}
        self._maps: dict[str, np.memmap] = {}
        for name in files:
            path = os.path.join(folder, name)
            header, start = _read_header(path)
            for key, info in header.items():
                if key != "__metadata__":
                    self._entries[key] = (path, info, start)

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key][1]["shape"])

    def get(self, key: str) -> np.ndarray:
        """A read-only memory-mapped view; slicing it reads only the touched pages."""
        path, info, start = self._entries[key]
        if info["dtype"] not in DTYPES:
            raise ValueError(f"tensor {key!r} in {path} has unsupported dtype {info['dtype']}")
        if path not in self._maps:
            self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        raw = self._maps[path][start + begin:start + end]
        return raw.view(DTYPES[info["dtype"]]).reshape(info["shape"])


class TensorToWrite:
    """A tensor known by name, shape and dtype up front; `fetch()` produces it when written."""

    def __init__(self, name: str, shape: tuple[int, ...], dtype, fetch: Callable[[], np.ndarray]):
        self.name, self.shape, self.dtype, self.fetch = name, tuple(int(s) for s in shape), np.dtype(dtype), fetch

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _plan_shards(tensors: list[TensorToWrite], max_shard_bytes: int) -> list[list[TensorToWrite]]:
    shards, current, size = [], [], 0
    for t in tensors:
        if current and size + t.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current or not shards:
        shards.append(current)
    return shards


def _write_file(path: str, tensors: list[TensorToWrite]) -> None:
    header, offset = {}, 0
    for t in tensors:
        if t.dtype not in _NAMES:
            raise ValueError(f"cannot write tensor {t.name!r} of dtype {t.dtype} to safetensors")
        header[t.name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors:
            arr = np.ascontiguousarray(t.fetch(), dtype=t.dtype)
            if arr.shape != t.shape:
                raise ValueError(f"tensor {t.name!r}: planned shape {t.shape}, produced {arr.shape}")
            f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def write_checkpoint(folder: str, tensors: Iterable[TensorToWrite], max_shard_bytes: int) -> list[str]:
    """Writes `model.safetensors`, or `model-0000i-of-0000n.safetensors` + index when over max_shard_bytes.

    Holds one tensor in host memory at a time. Returns the file names written.
    """
    tensors = list(tensors)
    shards = _plan_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        _write_file(os.path.join(folder, SINGLE_NAME), shards[0])
        return [SINGLE_NAME]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        _write_file(os.path.join(folder, name), shard)
        weight_map.update({t.name: name for t in shard})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
    with open(os.path.join(folder, INDEX_NAME), "w") as f:
        json.dump(index, f, indent=2, sort_keys=True)
    return names + [INDEX_NAME]
