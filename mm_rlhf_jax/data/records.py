"""MM-RLHF record schemas: annotated queries (`data.jsonl`) and ranked pairs (`dpo_pairs.jsonl`).

Pair records (`dpo_pairs.jsonl`) follow the format the MM-RLHF code consumes
(papers.md §1(c); the field names are the ones the released `train_dpo.py` `_get_item` reads)::

    {"id": str | int,                # query id; pairs of one query share it (ACC+ groups by it). UNVERIFIED:
                                     # the released loader never reads it; absent, the query is the pair's
                                     # (prompt, image / video) and the id is derived from them ("derived:...")
     "prompt": str, "chosen": str, "rejected": str,
     "image": "short/x.jpg" | ["short/x.jpg"]  |  "video": "video/<frame_dir>"  |  neither (text-only),
                                     # a list, as the released loader accepts (`type(image_file) is list`),
                                     # must hold one path: the model takes one image per pair
     "chosen_reason": str, "rejected_reason": str,   # critiques, reward-model training only
     "is_tie": bool,                 # optional, default false: RM tie loss, never a DPO pair
     "ls_factor": float,             # optional; absent is None (the released loader reads 1.0; UNVERIFIED
                                     # whether the released file has it); only dpo.beta_mode=ls_factor reads it
     "reference_chosen_logp": float, "reference_rejected_logp": float,   # optional, both or neither
     "delta": float,                 # optional extension: reward margin r(chosen) - r(rejected)
     "category": str}                # optional extension; else inferred from the media path

Query records (`data.jsonl`): the released field-level schema is UNVERIFIED
(papers.md §1(c), §1(g).5), so this is our own documented schema holding what
the paper says annotators produced::

    {"id": str, "prompt": str,
     "category": "long" | "short" | "mcq" | "safety" | "video",
     "image": str | "video": str | neither,      # "video" iff category == "video"
     "responses": [{"text": str,
                    "scores": {"helpfulness": 1..5, "faithfulness": 1..5, "ethics": 1..5},
                    "reason": str,                # short written critique of this response
                    "model": str}, ...],          # optional: which model wrote it
     "ranking": [i0, i1, ...],       # response indices, best first: a permutation of range(n)
     "ties": [bool] * (n - 1),       # ties[k]: ranking[k] and ranking[k+1] are equally good
     "ranking_reason": str,          # optional written justification
     "meta": {...}}                  # optional free-form (the synthetic data keeps its answer here)

Scores are the 5-level ordinal scales of App. B (1 = worst, 5 = best); see SCORE_LEVELS.
Media paths are relative to a media root (by default the folder holding the jsonl).
Parsing checks types and the ranking; `validation.py` adds file reading and media checks.
"""

import dataclasses
import hashlib
import json
from typing import Any

from mm_rlhf_jax.data.errors import DataError, Where

CATEGORIES = ("long", "short", "mcq", "safety", "video")
DIMENSIONS = ("helpfulness", "faithfulness", "ethics")
SCORE_LEVELS = {
    "helpfulness": ("Not Helpful", "Slightly Helpful", "Moderately Helpful", "Helpful", "Very Helpful"),
    "faithfulness": ("Severely Inaccurate", "Partially Inaccurate", "Moderately Accurate", "Accurate",
                     "Highly Accurate"),
    "ethics": ("Highly Unsafe", "Unsafe", "Moderately Ethical", "Ethical", "Highly Ethical"),
}
MIN_SCORE, MAX_SCORE = 1, 5

_NUMBER = (int, float)


def category_index(category: str | None) -> int:
    """Integer id of a category for batches; -1 when unknown."""
    return CATEGORIES.index(category) if category in CATEGORIES else -1


def infer_category(media_path: str | None) -> str | None:
    """The category keyword in a media path (how MM-RLHF's RewardBench code labels pairs)."""
    if not media_path:
        return None
    parts = media_path.replace("\\", "/").lower().split("/")
    for part in parts:
        for cat in CATEGORIES:
            if part == cat or part.startswith(cat + "_") or part.startswith(cat + "-"):
                return cat
    return None


def _field(obj: dict, key: str, types, where: Where, *, prefix: str = "", required: bool = True,
           default: Any = None):
    """obj[key] checked against `types` (bool is never accepted as a number)."""
    name = prefix + key
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(where, name, "missing required field")
        return default
    value = obj[key]
    bad_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
    if bad_bool or not isinstance(value, types):
        want = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise DataError(where, name, f"expected {want}, got {type(value).__name__} {value!r:.60}")
    return value


def _image(obj: dict, where: Where) -> str | None:
    """`image` as a path, or a one-path list (the released loader's list form; the model takes one image)."""
    value = obj.get("image")
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], str):
            raise DataError(where, "image", f"a list of {len(value)} entries {value!r:.80}: one image per record is "
                                            "supported (a one-path list is read as that path)")
        return value[0]
    return _field(obj, "image", str, where, required=False)


def _media(obj: dict, where: Where) -> tuple[str | None, str | None]:
    image = _image(obj, where)
    video = _field(obj, "video", str, where, required=False)
    if image is not None and video is not None:
        raise DataError(where, "image", "a record has an image or a video, not both")
    return image, video


@dataclasses.dataclass(frozen=True)
class Response:
    """One annotated response: text, 1..5 score per dimension, written critique."""

    text: str
    scores: dict
    reason: str
    model: str | None = None

    def total_score(self) -> int:
        return sum(self.scores[d] for d in DIMENSIONS)

    def to_json(self) -> dict:
        out = {"text": self.text, "scores": dict(self.scores), "reason": self.reason}
        if self.model is not None:
            out["model"] = self.model
        return out


@dataclasses.dataclass(frozen=True)
class QueryRecord:
    """One annotated query of `data.jsonl` (schema in the module docstring)."""

    id: str
    prompt: str
    category: str
    responses: tuple[Response, ...]
    ranking: tuple[int, ...]
    ties: tuple[bool, ...]
    image: str | None = None
    video: str | None = None
    ranking_reason: str | None = None
    meta: dict | None = None
    where: Where = dataclasses.field(default=Where(), compare=False)

    def rank_groups(self) -> list[list[int]]:
        """Response indices grouped by equal rank, best group first."""
        groups = [[self.ranking[0]]]
        for k, tied in enumerate(self.ties):
            if tied:
                groups[-1].append(self.ranking[k + 1])
            else:
                groups.append([self.ranking[k + 1]])
        return groups

    def ranks(self) -> list[int]:
        """ranks()[i] = rank of response i (0 = best; tied responses share a rank)."""
        out = [0] * len(self.responses)
        for r, group in enumerate(self.rank_groups()):
            for i in group:
                out[i] = r
        return out

    def to_json(self) -> dict:
        out = {"id": self.id, "prompt": self.prompt, "category": self.category}
        if self.image is not None:
            out["image"] = self.image
        if self.video is not None:
            out["video"] = self.video
        out["responses"] = [r.to_json() for r in self.responses]
        out["ranking"] = list(self.ranking)
        out["ties"] = list(self.ties)
        if self.ranking_reason is not None:
            out["ranking_reason"] = self.ranking_reason
        if self.meta is not None:
            out["meta"] = self.meta
        return out


def parse_response(obj: Any, where: Where, prefix: str) -> Response:
    if not isinstance(obj, dict):
        raise DataError(where, prefix.rstrip("."), f"expected an object, got {type(obj).__name__}")
    text = _field(obj, "text", str, where, prefix=prefix)
    scores = _field(obj, "scores", dict, where, prefix=prefix)
    for dim in DIMENSIONS:
        s = _field(scores, dim, int, where, prefix=prefix + "scores.")
        if not MIN_SCORE <= s <= MAX_SCORE:
            raise DataError(where, f"{prefix}scores.{dim}", f"score {s} outside {MIN_SCORE}..{MAX_SCORE}")
    extra = sorted(set(scores) - set(DIMENSIONS))
    if extra:
        raise DataError(where, f"{prefix}scores", f"unknown dimensions {extra}; expected {list(DIMENSIONS)}")
    reason = _field(obj, "reason", str, where, prefix=prefix)
    model = _field(obj, "model", str, where, prefix=prefix, required=False)
    return Response(text=text, scores={d: scores[d] for d in DIMENSIONS}, reason=reason, model=model)


def _check_ranking(ranking: list, ties: list, n: int, where: Where) -> None:
    seen: set[int] = set()
    for k, idx in enumerate(ranking):
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise DataError(where, f"ranking[{k}]", f"expected a response index (int), got {idx!r}")
        if not 0 <= idx < n:
            raise DataError(where, f"ranking[{k}]", f"index {idx} out of range for {n} responses")
        if idx in seen:
            raise DataError(where, f"ranking[{k}]", f"duplicate response index {idx} in ranking {ranking}")
        seen.add(idx)
    if len(seen) != n:
        missing = sorted(set(range(n)) - seen)
        raise DataError(where, "ranking", f"responses {missing} are not ranked; ranking={ranking}")
    if len(ties) != n - 1:
        raise DataError(where, "ties", f"inconsistent tie flags: {len(ties)} flags for {n} ranked responses "
                                       f"(need {n - 1}, one per adjacent ranking position)")
    for k, t in enumerate(ties):
        if not isinstance(t, bool):
            raise DataError(where, f"ties[{k}]", f"expected bool, got {t!r}")


def parse_query(obj: Any, where: Where = Where()) -> QueryRecord:
    """A validated QueryRecord from one decoded `data.jsonl` line."""
    if not isinstance(obj, dict):
        raise DataError(where, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    qid = _field(obj, "id", (str, int), where)
    prompt = _field(obj, "prompt", str, where)
    category = _field(obj, "category", str, where)
    if category not in CATEGORIES:
        raise DataError(where, "category", f"unknown category {category!r}; expected one of {CATEGORIES}")
    image, video = _media(obj, where)
    if (category == "video") != (video is not None):
        raise DataError(where, "video", f"category {category!r} with video={video!r}: "
                                        "a video path is required for, and only for, category 'video'")
    raw = _field(obj, "responses", list, where)
    if len(raw) < 2:
        raise DataError(where, "responses", f"need at least 2 responses to rank, got {len(raw)}")
    responses = tuple(parse_response(r, where, f"responses[{i}].") for i, r in enumerate(raw))
    ranking = _field(obj, "ranking", list, where)
    ties = _field(obj, "ties", list, where, required=False, default=[False] * (len(responses) - 1))
    _check_ranking(ranking, ties, len(responses), where)
    return QueryRecord(
        id=str(qid), prompt=prompt, category=category, responses=responses,
        ranking=tuple(ranking), ties=tuple(ties), image=image, video=video,
        ranking_reason=_field(obj, "ranking_reason", str, where, required=False),
        meta=_field(obj, "meta", dict, where, required=False), where=where)


@dataclasses.dataclass(frozen=True)
class PairRecord:
    """One `dpo_pairs.jsonl` line (fields in the module docstring)."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    image: str | None = None
    video: str | None = None
    chosen_reason: str | None = None
    rejected_reason: str | None = None
    is_tie: bool = False
    ls_factor: float | None = None  # absent: None (the release's loader reads 1.0; dpo.beta_mode=ls_factor refuses)
    reference_chosen_logp: float | None = None
    reference_rejected_logp: float | None = None
    delta: float | None = None
    category: str | None = None
    where: Where = dataclasses.field(default=Where(), compare=False)

    @property
    def has_critique(self) -> bool:
        return self.chosen_reason is not None and self.rejected_reason is not None

    def resolved_category(self) -> str | None:
        return self.category or infer_category(self.image or self.video)

    def to_json(self) -> dict:
        """The pair in the released format; optional fields only when set."""
        out = {"id": self.id, "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        for key in ("image", "video", "chosen_reason", "rejected_reason"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["is_tie"] = self.is_tie
        for key in ("ls_factor", "reference_chosen_logp", "reference_rejected_logp", "delta", "category"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


DERIVED_ID_PREFIX = "derived:"


def _pair_query_id(obj: dict, where: Where, prompt: str, image: str | None, video: str | None) -> str:
    """The pair's query id: its `id`, or (absent) one derived from what makes pairs "of one query"."""
    if obj.get("id") is not None:
        return str(_field(obj, "id", (str, int), where))
    key = json.dumps([prompt, image, video], ensure_ascii=False)
    return DERIVED_ID_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:16]


def parse_pair(obj: Any, where: Where = Where()) -> PairRecord:
    """A validated PairRecord from one decoded `dpo_pairs.jsonl` line."""
    if not isinstance(obj, dict):
        raise DataError(where, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    image, video = _media(obj, where)
    ref_c = _field(obj, "reference_chosen_logp", _NUMBER, where, required=False)
    ref_r = _field(obj, "reference_rejected_logp", _NUMBER, where, required=False)
    if (ref_c is None) != (ref_r is None):
        missing = "reference_rejected_logp" if ref_r is None else "reference_chosen_logp"
        raise DataError(where, missing, "reference log-probs come in pairs: both or neither")
    category = _field(obj, "category", str, where, required=False)
    if category is not None and category not in CATEGORIES:
        raise DataError(where, "category", f"unknown category {category!r}; expected one of {CATEGORIES}")
    chosen_reason = _field(obj, "chosen_reason", str, where, required=False)
    rejected_reason = _field(obj, "rejected_reason", str, where, required=False)
    if (chosen_reason is None) != (rejected_reason is None):
        missing = "rejected_reason" if rejected_reason is None else "chosen_reason"
        raise DataError(where, missing, "critiques come in pairs: both chosen_reason and rejected_reason, or neither")
    delta = _field(obj, "delta", _NUMBER, where, required=False)
    ls_factor = _field(obj, "ls_factor", _NUMBER, where, required=False)
    prompt = _field(obj, "prompt", str, where)
    return PairRecord(
        id=_pair_query_id(obj, where, prompt, image, video),
        prompt=prompt,
        chosen=_field(obj, "chosen", str, where),
        rejected=_field(obj, "rejected", str, where),
        image=image, video=video, chosen_reason=chosen_reason, rejected_reason=rejected_reason,
        is_tie=_field(obj, "is_tie", bool, where, required=False, default=False),
        ls_factor=None if ls_factor is None else float(ls_factor),
        reference_chosen_logp=None if ref_c is None else float(ref_c),
        reference_rejected_logp=None if ref_r is None else float(ref_r),
        delta=None if delta is None else float(delta), category=category, where=where)
