"""Prompt-pool records for RL (PPO, Pre-PPO selection, Align-Pro).

One JSON object per line (papers.md §2(c), INFERRED format)::

    {"id": str,                 # optional; default "<file stem>-<line>"
     "prompt": str,             # the user turn
     "domain": str,             # routing key: "math", "code", "general", "logic", ...
     "ground_truth": str,       # optional: final answer (math verifier; GenRM with ground truth)
     "unit_tests": str,         # optional: Python test statements (code sandbox)
     "reference": str,          # optional: best-of-N reference response (GenRM without ground truth)
     "meta": {...}}             # optional free-form (synthetic tasks keep their parameters here;
                                #  Pre-PPO writes its scores here)

Unknown fields are errors (a typo such as "groundtruth" would otherwise
silently drop a record's verifier). Every error names the file, line and field.
"""

import dataclasses
import json
import os
from typing import Any, Iterable

from mm_rlhf_jax import storage
from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.validation import read_jsonl

FIELDS = ("id", "prompt", "domain", "ground_truth", "unit_tests", "reference", "meta")
_TEXT_FIELDS = ("ground_truth", "unit_tests", "reference")


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    id: str
    prompt: str
    domain: str
    ground_truth: str | None = None
    unit_tests: str | None = None
    reference: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    where: Where = dataclasses.field(default=Where(), compare=False)

    def to_json(self) -> dict:
        out = {"id": self.id, "prompt": self.prompt, "domain": self.domain}
        for k in _TEXT_FIELDS:
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.meta:
            out["meta"] = self.meta
        return out


def _text(obj: dict, key: str, where: Where, *, required: bool) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(where, key, "missing required field")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(where, key, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(where, key, "empty string")
    return value


def parse_prompt_record(obj: Any, where: Where, default_id: str | None = None) -> PromptRecord:
    if not isinstance(obj, dict):
        raise DataError(where, "<record>", f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise DataError(where, unknown[0], f"unknown field; prompt-pool fields are {list(FIELDS)}")
    rid = obj.get("id", default_id)
    if rid is None:
        raise DataError(where, "id", "missing required field")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise DataError(where, "id", f"expected a string, got {type(rid).__name__}")
    meta = obj.get("meta")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise DataError(where, "meta", f"expected an object, got {type(meta).__name__}")
    domain = _text(obj, "domain", where, required=True)
    return PromptRecord(id=str(rid), prompt=_text(obj, "prompt", where, required=True), domain=domain.strip(),
                        meta=meta, where=where,
                        **{k: _text(obj, k, where, required=False) for k in _TEXT_FIELDS})


def load_prompt_pool(path: str) -> list[PromptRecord]:
    """Every record of a prompt-pool jsonl; duplicate ids are errors."""
    stem = os.path.splitext(storage.basename(path))[0]
    out, seen = [], {}
    for where, obj in read_jsonl(path):
        rec = parse_prompt_record(obj, where, default_id=f"{stem}-{where.line}")
        if rec.id in seen:
            raise DataError(where, "id", f"duplicate id {rec.id!r} (first at line {seen[rec.id]})")
        seen[rec.id] = where.line
        out.append(rec)
    if not out:
        raise ValueError(f"prompt pool {path} holds no records")
    return out


def records_from_dicts(objs: Iterable[dict], source: str = "<memory>") -> list[PromptRecord]:
    return [parse_prompt_record(o, Where(source, i + 1)) for i, o in enumerate(objs)]


def write_prompt_pool(path: str, records: Iterable[PromptRecord]) -> str:
    """Writes records atomically (storage.write_atomic)."""
    storage.write_atomic(path, "".join(json.dumps(rec.to_json(), ensure_ascii=False) + "\n" for rec in records))
    return path
