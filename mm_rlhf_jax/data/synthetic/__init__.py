"""The bundled tiny tasks behind the `tiny` presets: seeded, deterministic, byte-identical per seed.

mmrlhf.py          MM-RLHF-format dataset (image / video / safety queries, ranked responses,
                   critiques, ties) written as the release's jsonl files; held-out ground truth
mmrlhf_texts.py    its question / response / critique wording
shapes.py          coloured-shape images and videos
reasoning.py       arithmetic / python / general prompts for PPO and Align-Pro, demonstrations, verdicts
longdoc.py         the long-document retrieval task of LongPO
tiny_tokenizer.py  word-level tokenizer (TINY_VOCAB_SIZE) with a Qwen2-style chat template

`build_once(path, build)` writes a folder once, atomically: every host of a
multi-process run (and every resumed run) sees either nothing or all of it.
"""

import os
import tempfile


def build_once(path: str, build) -> str:
    """Builds a folder via a temporary sibling + rename, so concurrent hosts never see half of it."""
    if os.path.exists(path):
        return path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp_")
    build(tmp)
    try:
        os.rename(tmp, path)
    except OSError:  # another host got there first; its copy is identical
        pass
    return path
