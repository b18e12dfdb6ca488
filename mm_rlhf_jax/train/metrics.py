"""Metric sinks: metrics.jsonl, TensorBoard, and flat JSON files (eval.json), on process 0 only."""

import json
import math
import os
import tempfile
from typing import Mapping

import jax
import numpy as np


def to_python(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


def write_json_atomic(path: str, obj) -> None:
    """Writes JSON via a temporary file + rename, so readers never see a partial file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


class MetricWriter:
    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.workdir = workdir
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {k: to_python(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **row}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def write_json(self, name: str, obj) -> None:
        if self.enabled:
            write_json_atomic(os.path.join(self.workdir, name), obj)

    def json_once(self, name: str, compute):
        """The JSON file `name` of the workdir if an earlier run wrote it, else compute() written there.

        For results that must stay fixed across resumes (the starting model's
        eval): the value returned is the file's content either way.
        """
        path = os.path.join(self.workdir, name)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        obj = compute()
        self.write_json(name, obj)
        return json.loads(json.dumps(obj))

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
