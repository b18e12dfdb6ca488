"""The path layer on a non-local URL scheme (fsspec's memory://) and locally: names, atomic writes, appends,
local copies, and the run-level writers built on it (metrics, JSON, reference cache, LongPO stages, build_once)."""

import json
import os
import uuid

import numpy as np
import pytest

from mm_rlhf_jax import storage
from mm_rlhf_jax.data.longpo.generate import JsonlStage
from mm_rlhf_jax.data.synthetic import build_once
from mm_rlhf_jax.train import metrics, reference_cache


@pytest.fixture
def url():
    return f"memory://mm_rlhf_jax_test_{uuid.uuid4().hex[:8]}"


def test_names_keep_urls_intact():
    assert storage.join("gs://bucket/run", "checkpoints", "4") == "gs://bucket/run/checkpoints/4"
    assert storage.dirname("gs://bucket/run/eval.json") == "gs://bucket/run"
    assert storage.basename("gs://bucket/run/") == "run"
    assert storage.absolute("gs://bucket/run") == "gs://bucket/run"  # os.path.abspath would give ./gs:/bucket/run
    assert storage.resolve("gs://bucket/data", "img/1.png") == "gs://bucket/data/img/1.png"
    assert storage.resolve("gs://bucket/data", "/abs/1.png") == "/abs/1.png"
    assert storage.resolve("/data", "s3://other/1.png") == "s3://other/1.png"
    assert storage.absolute("runs/x") == os.path.abspath("runs/x") and not storage.is_url("runs/x")
    assert storage.is_url("memory://x") and not storage.is_url("C:/x")


def test_files_on_a_url(url):
    path = storage.join(url, "a", "b.json")
    assert not storage.exists(path)
    storage.write_atomic(path, '{"x": 1}')
    storage.write_atomic(storage.join(url, "a", "c.bin"), b"\x00\x01")
    assert storage.exists(path) and storage.isfile(path) and storage.isdir(storage.join(url, "a"))
    assert storage.listdir(storage.join(url, "a")) == ["b.json", "c.bin"]
    assert json.loads(storage.read_text(path)) == {"x": 1}
    assert storage.stat(storage.join(url, "a", "c.bin"))[0] == 2
    with storage.open(path) as f:
        assert f.read() == '{"x": 1}'
    with pytest.raises(ValueError, match="storage.Appender"):
        storage.open(path, "a")
    storage.remove(storage.join(url, "a"))
    assert not storage.exists(path)


def test_appender_keeps_earlier_lines_and_flushes(url, tmp_path):
    for target in (storage.join(url, "m.jsonl"), str(tmp_path / "m.jsonl")):
        a = storage.Appender(target, flush_secs=3600)
        a.write("1\n")
        a.close()
        b = storage.Appender(target, flush_secs=3600)  # a resumed run appends after the earlier lines
        b.write("2\n")
        if storage.is_url(target):
            assert storage.read_text(target) == "1\n"  # buffered until a flush
        b.flush()
        assert storage.read_text(target) == "1\n2\n"
        b.close()


def test_local_copy_and_trees(url, tmp_path, monkeypatch):
    monkeypatch.setenv("MM_RLHF_JAX_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "tokenizer.json").write_text("{}")
    (src / "sub" / "x.txt").write_text("x")
    remote = storage.join(url, "tok")
    storage.upload_tree(str(src), remote)
    local = storage.local_copy(remote)
    assert not storage.is_url(local) and local.startswith(str(tmp_path / "cache"))
    assert open(os.path.join(local, "sub", "x.txt")).read() == "x"
    assert storage.local_copy(remote) == local  # copied once
    storage.write_atomic(storage.join(remote, "sub", "x.txt"), "changed")
    changed = storage.local_copy(remote)
    assert changed != local and open(os.path.join(changed, "sub", "x.txt")).read() == "changed"
    assert storage.local_copy(str(src)) == str(src)  # local paths are used in place


def test_build_once_on_a_url_marks_completion(url):
    calls = []

    def build(folder):
        calls.append(folder)
        os.makedirs(os.path.join(folder, "train"))
        open(os.path.join(folder, "train", "pairs.jsonl"), "w").write("{}\n")

    target = storage.join(url, "data")
    assert build_once(target, build) == target
    assert build_once(target, build) == target and len(calls) == 1  # built once
    assert not storage.is_url(calls[0])  # the builder writes a local folder; it is uploaded
    assert storage.read_text(storage.join(target, "train", "pairs.jsonl")) == "{}\n"
    assert storage.exists(storage.join(target, "_BUILT"))


def test_run_writers_on_a_url(url):
    w = metrics.MetricWriter(url)
    w.write(0, {"train/loss": 1.5})
    w.write_json("eval.json", {"acc": 0.5})
    assert w.json_once("initial_eval.json", lambda: {"acc": 0.25}) == {"acc": 0.25}
    assert w.json_once("initial_eval.json", lambda: 1 / 0) == {"acc": 0.25}  # read back, not recomputed
    w.close()
    assert json.loads(storage.read_text(storage.join(url, "metrics.jsonl"))) == {"step": 0, "train/loss": 1.5}
    assert json.loads(storage.read_text(storage.join(url, "eval.json"))) == {"acc": 0.5}
    (events,) = storage.listdir(storage.join(url, "tensorboard"))
    assert events.startswith("events.out.tfevents") and storage.stat(storage.join(url, "tensorboard", events))[0]

    cache = reference_cache.ReferenceCache(storage.join(url, "cache"), "ref")
    cache.add(["a" * 40, "b" * 40], np.array([[1.0, 2.0], [3.0, 4.0]]))
    cache.save()
    again = reference_cache.ReferenceCache(storage.join(url, "cache"), "ref")
    assert len(again) == 2 and again.table["b" * 40].tolist() == [3.0, 4.0]

    stage = JsonlStage(storage.join(url, "round_0", "chosen"))
    stage.append([{"key": "d#0", "chosen": "x"}])
    stage.append([{"key": "d#1", "chosen": "y"}])
    resumed = JsonlStage(storage.join(url, "round_0", "chosen"))
    assert sorted(resumed.records) == ["d#0", "d#1"]
    assert storage.listdir(storage.join(url, "round_0", "chosen")) == ["part-000000.jsonl", "part-000001.jsonl"]


@pytest.mark.parametrize("where", ["url", "local"])
def test_write_atomic_chunks_streams_into_one_file(where, url, tmp_path):
    path = storage.join(url if where == "url" else str(tmp_path), "out", "big.jsonl")
    storage.write_atomic_chunks(path, (f"{i}\n" if i % 2 else f"{i}\n".encode() for i in range(1000)))
    assert storage.read_text(path).split() == [str(i) for i in range(1000)]
    with pytest.raises(RuntimeError):  # a failing producer leaves the earlier file in place
        storage.write_atomic_chunks(path, (x if x != "b" else (_ for _ in ()).throw(RuntimeError()) for x in "ab"))
    if where == "local":
        assert storage.read_text(path).split()[:2] == ["0", "1"] and len(os.listdir(tmp_path / "out")) == 1
