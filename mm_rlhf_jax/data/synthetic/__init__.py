"""The bundled tiny tasks behind the `tiny` presets: seeded, deterministic, byte-identical per seed.

mmrlhf.py          MM-RLHF-format dataset (image / video / safety queries, ranked responses,
                   critiques, ties) written as the release's jsonl files; held-out ground truth
mmrlhf_texts.py    its question / response / critique wording
shapes.py          coloured-shape images and videos
reasoning.py       arithmetic / python / general prompts for PPO and Align-Pro, demonstrations, verdicts
longdoc.py         the long-document retrieval task of LongPO
tiny_tokenizer.py  word-level tokenizer (TINY_VOCAB_SIZE) with a Qwen2-style chat template

`build_once(path, build)` writes a folder once: process 0 builds it (into a local
temporary folder, renamed into place locally, uploaded file by file with a
completion marker last on a URL) while the other processes wait, so every
host of a multi-process run (and every resumed run) sees either nothing or all of it.
"""

import os
import shutil
import tempfile

from mm_rlhf_jax import storage

# Written last into a folder built on a URL (object stores have no atomic folder rename).
COMPLETE = "_BUILT"


def _built(path: str) -> bool:
    return storage.exists(storage.join(path, COMPLETE)) if storage.is_url(path) else os.path.exists(path)


def build_once(path: str, build) -> str:
    """build(local_folder) writes the folder's files once; returns path (see the module docstring).

    Every process calls it at the same point of a run (it ends in a barrier).
    """
    from mm_rlhf_jax import distributed  # here, not at the top: configs import this package without jax

    if distributed.is_primary() and not _built(path):
        if storage.is_url(path):
            tmp = tempfile.mkdtemp(prefix="mm_rlhf_jax_build_")
            try:
                build(tmp)
                storage.upload_tree(tmp, path)
                storage.write_atomic(storage.join(path, COMPLETE), "")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp_")
            build(tmp)
            try:
                os.rename(tmp, path)
            except OSError:  # another run sharing the folder got there first; its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier(f"build_once:{path}")
    return path
