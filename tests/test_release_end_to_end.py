"""The MM-RLHF release end to end, on a folder laid out like it: split -> reward model -> scoring -> MM-DPO.

The folder (papers.md §1(c)) is written by the test from the synthetic generator's queries:

    MM-RLHF/dpo_pairs.jsonl                       "<image>\\n"-prefixed prompts, ls_factor on every pair, no
                                                  delta except on the first query's pairs, `image` a one-path
                                                  list on every other query, one query without `id`
    MM-RLHF/{long,mcq,short,safety}/<query>.jpg
    MM-RLHF/video/<query>/frame_XXX.jpg           videos as frame folders

and each stage reads the previous one's output through the same functions `main` runs: the split
command, the reward model (trained, evaluated, then scoring the split's train file: `delta` on every
pair), MM-DPO with the paper's beta on the scored pairs, the same run refused on the unscored file
(naming it and its first pair without `delta`), and MM-DPO with the release's `ls_factor` beta on the
unscored file (`slow`). Micro settings (the run tests' configs, 1-layer width-32 models, 2 steps): this checks
that the stages fit together on the release's layout, not learning.
"""

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mm_rlhf_jax.data.errors import DataError
from mm_rlhf_jax.data.pairs import all_pairs
from mm_rlhf_jax.data.records import DERIVED_ID_PREFIX, parse_pair
from mm_rlhf_jax.data.synthetic import mmrlhf
from mm_rlhf_jax.data.validation import read_jsonl
from mm_rlhf_jax.main import get_algorithm
from tests.algorithms.mm_dpo.test_run import micro_config as dpo_micro_config, read_metrics
from tests.algorithms.reward_model.test_run import micro_config as rm_micro_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every category of the release in a fixed cycle over the queries (two videos: one may be held out).
TASKS = ("colour", "mcq", "describe", "safety", "motion")
NUM_QUERIES = 10
HELDOUT_FRACTION = 0.3
WITH_DELTA_QUERY = 0  # its pairs carry a delta from elsewhere (the rest: none, as released)
NO_ID_QUERY = 3  # its pairs have no `id` (unverified in the release): the query is derived from prompt + media


def _save_media(root: str, query, media) -> str:
    """Writes the query's image (<category>/<id>.jpg) or frame folder (video/<id>/); returns its relative path."""
    if query.video is not None:
        rel = f"video/{query.id}"
        os.makedirs(os.path.join(root, rel))
        for f, frame in enumerate(media):
            Image.fromarray(frame).save(os.path.join(root, rel, f"frame_{f:03d}.jpg"), quality=95)
        return rel
    rel = f"{query.category}/{query.id}.jpg"
    os.makedirs(os.path.join(root, query.category), exist_ok=True)
    Image.fromarray(media).save(os.path.join(root, rel), quality=95)
    return rel


def _release_pairs(q: int, query, media_path: str, rng) -> list[dict]:
    """The query's ranked pairs as the release writes them (no `category`: it comes from the media path)."""
    rows = []
    for pair in all_pairs(query):
        row = {"id": query.id, "prompt": ("<video>\n" if query.video else "<image>\n") + pair.prompt,
               "chosen": pair.chosen, "rejected": pair.rejected,
               "chosen_reason": pair.chosen_reason, "rejected_reason": pair.rejected_reason,
               "is_tie": pair.is_tie, "ls_factor": round(float(rng.random()), 3)}
        if query.video is not None:
            row["video"] = media_path
        else:
            row["image"] = [media_path] if q % 2 else media_path
        if q == WITH_DELTA_QUERY:
            row["delta"] = 0.5
        if q == NO_ID_QUERY:
            del row["id"]
        rows.append(row)
    return rows


def write_release(root: str, seed: int = 3) -> str:
    """The release-shaped folder under `root`; returns its dpo_pairs.jsonl."""
    rng = np.random.default_rng(seed)
    cfg = mmrlhf.SyntheticConfig(seed=seed)
    rows = []
    for q in range(NUM_QUERIES):
        query, media = mmrlhf.make_query(rng, f"q{q:03d}", TASKS[q % len(TASKS)], cfg)
        rows += _release_pairs(q, query, _save_media(root, query, media), rng)
    path = os.path.join(root, "dpo_pairs.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def split_release(pairs: str, out: str) -> dict:
    """`python -m mm_rlhf_jax.data.split`, as the README runs it; returns split.json."""
    subprocess.run([sys.executable, "-m", "mm_rlhf_jax.data.split", "--pairs", pairs, "--out", out,
                    "--heldout_fraction", str(HELDOUT_FRACTION), "--seed", "0"],
                   check=True, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    with open(os.path.join(out, "split.json")) as f:
        return json.load(f)


def release_data(c, *, train: str, heldout: str, media_root: str, tokenizer: str):
    """Points a micro config's data block at release files (the flags the README passes)."""
    c.data.synthetic, c.data.train, c.data.heldout = False, train, heldout
    c.data.media_root, c.data.tokenizer = media_root, tokenizer
    return c


def query_ids(path: str) -> set:
    return {parse_pair(obj, where).id for where, obj in read_jsonl(path)}


def dpo_config(beta_mode: str, rm_config, **data):
    """The MM-DPO run test's micro config on the reward model's micro trunk, 2 steps, no warm start."""
    c = dpo_micro_config(steps=2)
    c.model.tiny.update(rm_config.model.tiny.to_dict())
    c.warm_start.steps = 0
    c.dpo.beta_mode = beta_mode
    return release_data(c, **data)


def check_dpo_run(workdir: str, result: dict, beta_mode: str):
    with open(os.path.join(workdir, "eval.json")) as f:
        saved = json.load(f)
    assert saved["beta_mode"] == result["beta_mode"] == beta_mode
    assert saved["beta_path"].startswith(f"{beta_mode}: ") and saved["steps"] == 2
    assert saved["num_heldout_pairs"] > 0 and 0.0 <= saved["preference_accuracy"] <= 1.0
    losses = read_metrics(workdir)
    assert sorted(losses) == [0, 1] and all(np.isfinite(v) for v in losses.values())
    assert "2" in os.listdir(os.path.join(workdir, "checkpoints"))


@dataclasses.dataclass(frozen=True)
class Release:
    root: str  # the release-shaped folder
    split: dict  # split.json
    train: str  # split/train/dpo_pairs.jsonl (unscored)
    heldout: str  # split/heldout/dpo_pairs.jsonl
    rm: object  # the reward model's config (its score block names the scored file)
    rm_result: dict
    data: dict  # the data flags every MM-DPO run passes besides data.train


@pytest.fixture(scope="module")
def release(tmp_path_factory, devices8, tiny_tok_dir):
    """The folder, split by the command line, and the reward model trained on it and scoring its train file."""
    tmp = tmp_path_factory.mktemp("release")
    root = str(tmp / "MM-RLHF")
    os.makedirs(root)
    split_dir = os.path.join(root, "split")
    summary = split_release(write_release(root), split_dir)
    train, heldout = (os.path.join(split_dir, s, "dpo_pairs.jsonl") for s in ("train", "heldout"))
    data = dict(heldout=heldout, media_root=root, tokenizer=tiny_tok_dir)
    rm_dir = str(tmp / "rm")
    rm = release_data(rm_micro_config("critique", rm_dir), train=train, **data)
    # Scored next to the split's train file, media paths still relative to the release folder.
    rm.score.input, rm.score.output = train, os.path.join(split_dir, "train", "dpo_pairs_scored.jsonl")
    return Release(root, summary, train, heldout, rm, get_algorithm(rm.algorithm)(rm, rm_dir), data)


def test_split_holds_out_whole_queries(release):
    train_ids, heldout_ids = query_ids(release.train), query_ids(release.heldout)
    assert not train_ids & heldout_ids and heldout_ids == set(release.split["heldout_ids"])
    assert release.split["queries"] == {"train": 7, "heldout": 3} and release.split["media_root"] == release.root
    assert any(i.startswith(DERIVED_ID_PREFIX) for i in train_ids | heldout_ids)  # the query without `id`


def test_reward_model_scores_every_pair_of_the_split(release):
    rm = release.rm
    assert release.rm_result["scored_file"] == rm.score.output and release.rm_result["steps"] == 2
    assert 0.0 <= release.rm_result["acc"] <= 1.0
    inputs = [obj for _, obj in read_jsonl(release.train)]
    scored = [obj for _, obj in read_jsonl(rm.score.output)]
    assert len(scored) == len(inputs)
    assert any(isinstance(o.get("image"), list) for o in inputs) and any("video" in o for o in inputs)
    for original, row in zip(inputs, scored):
        assert np.isfinite(row["delta"]) and row["delta"] == pytest.approx(row["chosen_reward"] - row["rejected_reward"])
        assert {k: row[k] for k in original if k != "delta"} == {k: v for k, v in original.items() if k != "delta"}
        assert row.get("source_delta") == original.get("delta")  # a delta from elsewhere is kept aside


def test_paper_beta_trains_on_the_scored_pairs(release, tmp_path):
    workdir = str(tmp_path / "dpo_paper")
    c = dpo_config("paper", release.rm, train=release.rm.score.output, **release.data)
    check_dpo_run(workdir, get_algorithm(c.algorithm)(c, workdir), "paper")


def test_paper_beta_refuses_the_unscored_file_at_its_first_pair_without_delta(release, tmp_path):
    train = release.train
    first_without = next(w.line for w, obj in read_jsonl(train) if "delta" not in obj and not obj["is_tie"])
    assert first_without > 1  # the first query's pairs carry a delta: the check reads on past them
    workdir = str(tmp_path / "dpo_unscored")
    c = dpo_config("paper", release.rm, train=train, **release.data)
    with pytest.raises(DataError, match=rf"{re.escape(train)}:{first_without}: field 'delta': "
                                        r"dpo.beta_mode='paper' needs 'delta' on every training pair.*"
                                        r"score the pairs with the critique reward model"):
        get_algorithm(c.algorithm)(c, workdir)
    assert not os.path.exists(os.path.join(workdir, "reference_cache"))  # before any compute


# `slow` for the default suite's time: the ls_factor beta itself is covered by algorithms/mm_dpo/test_step.py.
@pytest.mark.slow
def test_ls_factor_beta_trains_on_the_release_factor(release, tmp_path):
    workdir = str(tmp_path / "dpo_ls_factor")
    c = dpo_config("ls_factor", release.rm, train=release.train, **release.data)
    c.dpo.w = 0.1  # the released script's weight
    check_dpo_run(workdir, get_algorithm(c.algorithm)(c, workdir), "ls_factor")
