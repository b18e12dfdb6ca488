"""Bundled synthetic MM-RLHF-format data for the `tiny` presets, generated from a seed.

Images are coloured shapes on a plain background (32x32, 32x64 or 64x32, so the
anyres grids differ); questions ask about colour, count, position, which option
matches a colour (mcq) or for a description (long), plus safety requests and a
few videos (frame folders of a moving shape). The same question text recurs
with different images and different correct answers, so only a model that
looks at the pixels can rank the responses: four per query, helpful-correct >
terse-correct > wrong > irrelevant (safety: reasoned refusal > terse refusal >
partial help > full help), with per-dimension scores consistent with that
order, written critiques that say what the image shows (the reward model's
teacher critiques), and some ties. Optionally (`train_hard_negatives`) training
queries get a fifth response, the wrong answer in terse form.

Layout written by `write_dataset(out_dir)`, one self-contained folder per split::

    out_dir/train/{data.jsonl, dpo_pairs.jsonl, images/*.png, videos/<id>/frame_XXX.png}
    out_dir/heldout/...

Pairs come from `data.pairs.all_pairs` (ties kept with is_tie=true). Their
`delta` is a stand-in for a reward model's margin: the mean per-dimension
score gap, (total(chosen) - total(rejected)) / 3. `ground_truth(query)` and
`is_correct(text, query)` serve "are greedy answers right" evals.
"""

import dataclasses
import os
import re
import zlib

import numpy as np
from PIL import Image

from mm_rlhf_jax.data import images as image_lib
from mm_rlhf_jax.data.pairs import all_pairs
from mm_rlhf_jax.data.records import DIMENSIONS, PairRecord, QueryRecord, Response
from mm_rlhf_jax.data.validation import write_jsonl
from mm_rlhf_jax.data.synthetic import mmrlhf_texts as T
from mm_rlhf_jax.data.synthetic.shapes import COLOURS, RADIUS, SHAPES, Shape, draw, place

# Tiny vision geometry the synthetic data is made for (matches a SigLIP with image_size 32, patch 8).
TINY_TILE_SIZE = 32
TINY_PATCH_SIZE = 8
TINY_IMAGE_CONFIG = image_lib.ImageProcessorConfig(
    tile_size=TINY_TILE_SIZE, pinpoints=image_lib.tiny_pinpoints(TINY_TILE_SIZE),
    image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
IMAGE_SIZES = ((32, 32), (32, 64), (64, 32))
TASK_CATEGORY = {"colour": "short", "count": "short", "position": "short", "mcq": "mcq",
                 "describe": "long", "safety": "safety", "motion": "video"}
SPLITS = ("train", "heldout")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_train: int = 256
    num_heldout: int = 64
    seed: int = 0
    tie_top_prob: float = 0.15  # helpful and terse answers judged equally good
    tie_bottom_prob: float = 0.10  # wrong and irrelevant answers judged equally bad
    # Give each visual training query a fifth response, its terse wrong answer ("blue."), tied
    # with the wrong one. Held-out splits never get it (their pairs stay comparable across
    # settings). It doubles the critiques that name a wrong answer, so a critic that writes
    # what the image shows instead of what the answer says is wrong half the time, not a third.
    train_hard_negatives: bool = False
    critique_style: str = "answer_first"  # teacher critique wording: synthetic_tasks.CRITIQUE_STYLES
    video_frames: int = 12
    video_size: tuple[int, int] = (32, 64)
    task_weights: tuple[tuple[str, float], ...] = (
        ("colour", 0.2), ("count", 0.15), ("position", 0.15), ("mcq", 0.1),
        ("describe", 0.15), ("safety", 0.1), ("motion", 0.15))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _others(options, value):
    return [o for o in options if o != value]


# Object sizes. A tiny random-init VLM learns to read an object that covers a good share of a
# 32x32 tile within ~100 steps, but barely learns at all from a 10-pixel shape (the answer token
# must then single out one image token among ~50), so objects are large: one per scene, or a row
# of up to three in a wide image for counting.
BIG = 11  # half-size of a single object (~22 px)
ROW = 9  # half-size of each object in a counting row (~18 px, one per third of a 64 px width)
WIDE = (32, 64)  # (height, width) of scenes with a left/right or row layout


def _scene(task: str, rng: np.random.Generator, size, cfg: SyntheticConfig):
    """(Texts, media) for one task; media is uint8[H, W, 3] or uint8[F, H, W, 3] (video)."""
    colours, irr = tuple(COLOURS), _pick(rng, T.IRRELEVANT)
    s, c = _pick(rng, SHAPES), _pick(rng, colours)
    if task in ("colour", "mcq", "safety"):
        (p,) = place(rng, 1, size, r=BIG)
        image = draw([Shape(s, c, *p, r=BIG)], size)
        if task == "colour":
            return T.colour_texts(s, c, _pick(rng, _others(colours, c)), irr), image
        if task == "mcq":  # which shape has this colour: needs the silhouette
            return T.mcq_texts(c, s, _pick(rng, _others(SHAPES, s)), irr), image
        return T.safety_texts(s, int(rng.integers(len(T.SAFETY_REQUESTS)))), image
    h, w = WIDE
    if task == "position":
        side = _pick(rng, T.SIDES)
        x_range = (BIG + 1, w / 2 - BIG) if side == "left" else (w / 2 + BIG, w - BIG - 1)
        (p,) = place(rng, 1, WIDE, x_range=x_range, r=BIG)
        return T.position_texts(s, side, irr), draw([Shape(s, c, *p, r=BIG)], WIDE)
    if task == "count":
        n = int(rng.integers(1, 4))
        slots = sorted(rng.choice(3, size=n, replace=False).tolist())
        shapes = [Shape(s, _pick(rng, colours), float(rng.uniform(ROW + 1, h - ROW - 1)), w * (2 * k + 1) / 6, r=ROW)
                  for k in slots]
        word = T.NUMBER_WORDS[n - 1]
        return T.count_texts(s, word, _pick(rng, _others(T.NUMBER_WORDS, word)), irr), draw(shapes, WIDE)
    if task == "describe":  # one object in each half
        s1, s2 = (str(k) for k in rng.permutation(SHAPES)[:2])
        c1, c2 = (str(k) for k in rng.permutation(colours)[:2])
        y1, y2 = (float(rng.uniform(BIG + 1, h - BIG - 1)) for _ in range(2))
        image = draw([Shape(s1, c1, y1, w / 4, r=BIG), Shape(s2, c2, y2, 3 * w / 4, r=BIG)], WIDE)
        return T.describe_texts(c1, s1, c2, s2, _pick(rng, _others(colours, c1)), irr), image
    if task == "motion":
        direction = _pick(rng, T.SIDES)
        vh, vw = cfg.video_size
        r = min(BIG, vh // 2 - 1)
        xs = np.linspace(r + 1, vw - r - 1, cfg.video_frames)
        xs = xs if direction == "right" else xs[::-1]
        cy = float(rng.uniform(r + 1, vh - r - 1))
        frames = np.stack([draw([Shape(s, c, cy, float(x), r=r)], cfg.video_size) for x in xs])
        return T.motion_texts(s, direction, irr), frames
    raise ValueError(f"unknown synthetic task {task!r}; known: {sorted(TASK_CATEGORY)}")


def make_query(rng: np.random.Generator, qid: str, task: str, cfg: SyntheticConfig, *,
               hard_negative: bool = False):
    """(QueryRecord with media paths images/<qid>.png or videos/<qid>, media array).

    hard_negative: add the visual task's terse wrong answer as a fifth response,
    tied with the wrong answer. It draws nothing from `rng` (its slot comes from a
    generator seeded by (cfg.seed, qid)), so every other record of the split, and
    the splits after it, stay as they are without it.
    """
    size = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    texts, media = _scene(task, rng, size, cfg)
    scores = [list(s) for s in texts.scores]
    ties = [False, False, False]
    if rng.random() < cfg.tie_top_prob:
        scores[1], ties[0] = list(scores[0]), True
    elif rng.random() < cfg.tie_bottom_prob:
        scores[2], ties[2] = list(scores[3]), True
    # Store the responses in a random order so the ranking is not the identity.
    order = [int(i) for i in rng.permutation(4)]  # order[k] = which best-first response sits at slot k
    critiques, terse_wrong_critique = texts.critiques(cfg.critique_style)
    answers, reasons = list(texts.responses), list(critiques)
    if hard_negative and texts.terse_wrong is not None:
        # Best-first becomes (helpful, terse, wrong, terse wrong, irrelevant); the terse wrong
        # answer is as bad as the wrong one (same scores, tied), so the irrelevant one stays last.
        answers.insert(3, texts.terse_wrong[0])
        reasons.insert(3, terse_wrong_critique)
        scores.insert(3, list(scores[2]))
        ties = ties[:2] + [True] + ties[2:]
        order = [b if b < 3 else 4 for b in order]
        side = np.random.default_rng([cfg.seed, zlib.crc32(qid.encode())])
        order.insert(int(side.integers(len(order) + 1)), 3)
    responses = tuple(Response(text=answers[b], reason=reasons[b], scores=dict(zip(DIMENSIONS, scores[b])))
                      for b in order)
    ranking = tuple(order.index(b) for b in range(len(order)))
    video = task == "motion"
    meta = {"task": task, "answer": texts.answer}
    rec = QueryRecord(
        id=qid, prompt=texts.prompt, category=TASK_CATEGORY[task], responses=responses, ranking=ranking,
        ties=tuple(ties), image=None if video else f"images/{qid}.png", video=f"videos/{qid}" if video else None,
        ranking_reason="Ranked by whether the answer matches the image, then by completeness.", meta=meta)
    return rec, media


def _with_delta(pair: PairRecord, query: QueryRecord) -> PairRecord:
    by_text = {r.text: r for r in query.responses}
    gap = by_text[pair.chosen].total_score() - by_text[pair.rejected].total_score()
    return dataclasses.replace(pair, delta=gap / len(DIMENSIONS))


def write_split(split_dir: str, n: int, rng: np.random.Generator, prefix: str, cfg: SyntheticConfig, *,
                hard_negatives: bool = False):
    """Write one split; returns its query records (hard_negatives: see `make_query`)."""
    tasks, weights = zip(*cfg.task_weights)
    p = np.asarray(weights, np.float64) / sum(weights)
    queries, pairs = [], []
    for i in range(n):
        qid = f"{prefix}-{i:05d}"
        task = str(tasks[int(rng.choice(len(tasks), p=p))])
        query, media = make_query(rng, qid, task, cfg, hard_negative=hard_negatives)
        if query.video is not None:
            folder = os.path.join(split_dir, query.video)
            os.makedirs(folder, exist_ok=True)
            for f, frame in enumerate(media):
                Image.fromarray(frame).save(os.path.join(folder, f"frame_{f:03d}.png"))
        else:
            path = os.path.join(split_dir, query.image)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(media).save(path)
        queries.append(query)
        pairs.extend(_with_delta(pr, query) for pr in all_pairs(query))
    write_jsonl(os.path.join(split_dir, "data.jsonl"), queries)
    write_jsonl(os.path.join(split_dir, "dpo_pairs.jsonl"), pairs)
    return queries


def write_dataset(out_dir: str, cfg: SyntheticConfig = SyntheticConfig()) -> dict[str, str]:
    """Generate train and held-out splits under out_dir; returns {split: folder}."""
    rng = np.random.default_rng(cfg.seed)
    out = {}
    for split, n in zip(SPLITS, (cfg.num_train, cfg.num_heldout)):
        out[split] = os.path.join(out_dir, split)
        write_split(out[split], n, rng, split, cfg, hard_negatives=cfg.train_hard_negatives and split == "train")
    return out


def ground_truth(query: QueryRecord) -> str:
    """The correct short answer of a synthetic query ("red", "two", "left", "B", ..., "refuse")."""
    if not query.meta or "answer" not in query.meta:
        raise ValueError(f"query {query.id!r} ({query.where}) has no meta.answer: not synthetic data")
    return query.meta["answer"]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def is_correct(text: str, query: QueryRecord) -> bool:
    """Whether a generated answer states the ground truth and no competing answer."""
    answer, task = ground_truth(query), query.meta["task"]
    words = _words(text)
    lower = [w.lower() for w in words]
    if task == "safety":
        return any(w in words for w in T.REFUSAL_WORDS) and "Sure" not in words
    if task == "mcq":  # option letters are upper case; "a" is an article
        return answer in words and not any(o in words for o in T.LETTERS if o != answer)
    if task == "describe":
        text_l = " ".join(lower)
        parts = answer.split(" and ")
        return all(part in text_l for part in parts)
    candidates = {"colour": tuple(COLOURS), "count": T.NUMBER_WORDS,
                  "position": T.SIDES, "motion": T.SIDES}[task]
    return answer in lower and not any(c in lower for c in candidates if c != answer)
