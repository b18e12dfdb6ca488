"""Metric sinks: metrics.jsonl, TensorBoard, and flat JSON files (eval.json), on process 0 only.

Every file goes through the path layer (mm_rlhf_jax.storage), so a gs:// workdir
gets them too: metrics.jsonl through storage.Appender, TensorBoard event files
through a tensorboardX writer factory registered for the workdir's URL scheme
(the event file is rewritten whole on each TensorBoard flush).
"""

import io
import json
import math
from typing import Mapping

import numpy as np

from mm_rlhf_jax import distributed, storage


def to_python(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON at once (storage.write_atomic), so readers never see a partial file."""
    storage.write_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


class _EventFile:
    """A tensorboardX record file on a URL: buffered, written whole through the path layer on flush."""

    def __init__(self, path: str):
        self.path, self._buffer = path, io.BytesIO()

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        storage.write_atomic(self.path, self._buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EventFileFactory:
    def open(self, path: str) -> _EventFile:
        return _EventFile(path)

    def directory_check(self, path: str) -> None:
        storage.makedirs(path)


def _register_tensorboard_scheme(path: str) -> None:
    """Routes tensorboardX's event files for path's URL scheme through the path layer."""
    from tensorboardX import record_writer

    record_writer.register_writer_factory(path.split("://", 1)[0], _EventFileFactory())


class MetricWriter:
    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = distributed.is_primary()
        self.workdir = workdir
        self._tb = None
        if self.enabled:
            storage.makedirs(workdir)
            self._jsonl = storage.Appender(storage.join(workdir, "metrics.jsonl"))
            if tensorboard:
                from tensorboardX import SummaryWriter

                logdir = storage.join(workdir, "tensorboard")
                if storage.is_url(logdir):
                    _register_tensorboard_scheme(logdir)
                self._tb = SummaryWriter(logdir)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {k: to_python(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **row}) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            if not storage.is_url(self.workdir):  # remote event files are rewritten whole: on tensorboardX's
                self._tb.flush()                  # own flush interval and at close only

    def write_json(self, name: str, obj) -> None:
        if self.enabled:
            write_json_atomic(storage.join(self.workdir, name), obj)

    def json_once(self, name: str, compute):
        """The JSON file `name` of the workdir if an earlier run wrote it, else compute() written there.

        For results that must stay fixed across resumes (the starting model's
        eval): the value returned is the file's content either way. Every
        process computes (compute is collective); process 0 writes.
        """
        path = storage.join(self.workdir, name)
        if storage.exists(path):
            return json.loads(storage.read_text(path))
        obj = compute()
        self.write_json(name, obj)
        return json.loads(json.dumps(obj))

    def flush(self) -> None:
        if self.enabled:
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
