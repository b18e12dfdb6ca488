"""The bundled synthetic tasks are byte-stable: the same seeds give the same data as at e9e14f9.

The tiny presets' accuracy figures in bench/RESULTS.md were measured on this data, so any change
to it (wording, image drawing, split order) must be deliberate: it shows up here as a new digest.
Images are compared by decoded pixels and tokenizers by vocabulary, so an encoder or
serialiser upgrade (pillow's zlib, tokenizers' JSON layout) does not count as a change.
The digests below were computed at e9e14f9, before the package restructure moved these modules
out of `testing/`.
"""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from mm_rlhf_jax.data.synthetic import longdoc, mmrlhf, reasoning, tiny_tokenizer

EXPECTED = {
    "mmrlhf_default": "c68815f7953ecb581eff16f222e7fecb1b157a5b1914bc4045da4bd7385255cd",
    "mmrlhf_rm": "c58a931609b869c4e0c714275565aec6cbb6e218fb8800ea1e849bc29fe4f2ca",
    "mmrlhf_evidence": "159c33a899d11faf6ba0aa81168d0ce6b9960c96901b77ae5d99282e22fa41b7",
    "tiny_tokenizer": "6469072ccb54838697027c1fe7b88b0091b4f53b51761e501a0a5ff325b82cdf",
    "reasoning": "02cde816159891edf5866b6826cb9b7e6bacfdd1dbba3667c98042126afc49bc",
    "reasoning_tokenizer": "61abaca00d852658c0ca36c8d4cf904d1a06e52eac4925c4e6bba2f67430b0fe",
    "longdoc": "86b54292509f5a511b0358036d6a6529e726c11e2823f086ececdbcca44c820f",
    "longdoc_tokenizer": "877c237c344bdbc3ea3571be4392339e78d36e06aa6e08df24c5ea9e9de1b60c",
}


def tree_digest(root: str) -> str:
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(d, f)
            h.update(os.path.relpath(p, root).encode())
            if f.endswith(".png"):
                a = np.asarray(Image.open(p))
                h.update(str(a.shape).encode())
                h.update(a.tobytes())
            elif f == "tokenizer.json":
                with open(p) as fh:
                    j = json.load(fh)
                h.update(json.dumps([j["model"]["vocab"], j.get("added_tokens")], sort_keys=True).encode())
            elif f.endswith(".json"):
                with open(p) as fh:
                    h.update(json.dumps(json.load(fh), sort_keys=True).encode())
            else:
                with open(p, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


MMRLHF = {
    "mmrlhf_default": mmrlhf.SyntheticConfig(num_train=48, num_heldout=16, seed=0),
    "mmrlhf_rm": mmrlhf.SyntheticConfig(num_train=48, num_heldout=16, seed=1, train_hard_negatives=True,
                                        critique_style="fact_check"),
    "mmrlhf_evidence": mmrlhf.SyntheticConfig(num_train=24, num_heldout=8, seed=2, critique_style="evidence_first"),
}


@pytest.mark.parametrize("name", sorted(MMRLHF))
def test_mmrlhf_data_unchanged(tmp_path, name):
    mmrlhf.write_dataset(str(tmp_path), MMRLHF[name])
    assert tree_digest(str(tmp_path)) == EXPECTED[name]


def test_tokenizers_unchanged(tmp_path):
    tiny_tokenizer.build_tiny_tokenizer(str(tmp_path / "tiny"))
    reasoning.build_tokenizer(str(tmp_path / "reasoning"))
    longdoc.build_tokenizer(str(tmp_path / "longdoc"), ("Answer briefly.", "Reply with the value only."))
    got = {k: tree_digest(str(tmp_path / d)) for k, d in
           [("tiny_tokenizer", "tiny"), ("reasoning_tokenizer", "reasoning"), ("longdoc_tokenizer", "longdoc")]}
    assert got == {k: EXPECTED[k] for k in got}


def test_reasoning_tasks_unchanged(tmp_path):
    splits = reasoning.make_splits(0, {"sft": 64, "train": 32, "new": 32, "heldout": 16},
                                   reasoning.TaskMix(0.4, 0.3, 0.3), math_tasks=("largest", "smallest"))
    for k, v in splits.items():
        reasoning.write_pool(str(tmp_path / f"{k}.jsonl"), v)
    math_only = reasoning.make_splits(0, {"sft": 64, "train": 32, "heldout": 16}, reasoning.TaskMix(1.0, 0.0, 0.0),
                                      math_tasks=("largest", "smallest"))
    reasoning.write_pool(str(tmp_path / "para.jsonl"), reasoning.paraphrased(math_only["train"]))
    with open(tmp_path / "convs.json", "w") as f:
        json.dump([reasoning.sft_conversations(splits["sft"], 0, label_noise=0.5),
                   reasoning.rewrite_conversations(reasoning.paraphrased(math_only["sft"]), 0, p_canonical=0.25,
                                                   p_copy=0.6, template=reasoning.PROMPTER_TEMPLATE),
                   reasoning.judge_conversations(32, 0, "tiny")], f)
    assert tree_digest(str(tmp_path)) == EXPECTED["reasoning"]


def test_longdoc_task_unchanged(tmp_path):
    cfg = longdoc.TaskConfig(passages_per_doc=16, min_filler=2, max_filler=4)
    longdoc.write_documents(str(tmp_path / "documents.jsonl"), longdoc.make_documents(0, 8, cfg))
    sft_cfg = longdoc.TaskConfig(min_filler=2, max_filler=4, sft_min_passages=2, sft_max_passages=3)
    with open(tmp_path / "evals.json", "w") as f:
        json.dump([longdoc.eval_records(longdoc.make_documents(1, 4, cfg, prefix="eval"), 2),
                   longdoc.sft_examples(0, 16, ("a", "b"), sft_cfg)], f)
    assert tree_digest(str(tmp_path)) == EXPECTED["longdoc"]
