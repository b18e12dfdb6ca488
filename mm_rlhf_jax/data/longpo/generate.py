"""Self-generated short-to-long preference data (papers.md §3(d)), resumable stage by stage.

    documents {"id", "text"}                                      (length-filtered)
      -> chunks/           <= max_chunks_per_doc chunks of <= max_chunk_tokens per document
      -> questions/        the model writes questions about each chunk (self-instruct); one is kept
      -> chosen/           y_S: the model's answer given chunk + phrase + question
      -> (filter refused / repetitive chosen answers; keep <= turns_per_doc turns per document)
      -> rejected/         y_L: the model's answer given the whole document + phrase + question
      -> samples.jsonl     both answers filtered; turns grouped into multi-turn samples (>= min_turns)
      -> stats.json        counts per stage and per drop reason

Every stage is a folder of jsonl parts (one line per item), one part per batch,
each written at once (storage.write_atomic: a crash loses at most the batch being
written, and it works on object stores, which cannot append). Re-running reads
what is there and generates only the missing items, in the same batches and with
the same per-batch sampling seeds as an uninterrupted run, so a resumed run writes
the same data. Progress is shown per stage (progress.Progress: a bar on
a terminal, periodic lines with items/s elsewhere).

Several processes: every process runs every generation (the generator is
collective) and holds every record; process 0 alone writes, and the others
read samples.jsonl only after a barrier.
"""

import dataclasses
import json
import logging
import zlib
from typing import Callable, Protocol, Sequence

import numpy as np

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.data.longpo import chunking, prompts
from mm_rlhf_jax.data.longpo.filters import FilterConfig, answer_problem
from mm_rlhf_jax.progress import Progress


class TextGenerator(Protocol):
    """generator(conversations, seed) -> one result per conversation with .text and .truncated
    (rollout.generate.Generator.bind(params) is one); batch_size conversations per call."""

    batch_size: int

    def __call__(self, conversations: Sequence[list[dict]], seed: int) -> list: ...


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    max_chunk_tokens: int = 32768  # paper: chunks of <= 32K tokens
    min_chunk_tokens: int = 16384  # released grouping: >= 16K
    max_chunks_per_doc: int = 4  # paper: <= 4 chunks per document
    turns_per_doc: int = 2  # released generate_longpo_pair.py keeps <= 2 turns; the paper up to 4
    min_turns: int = 1  # documents with fewer surviving turns are dropped (released grouping: exactly 4)
    min_doc_tokens: int = 65536  # released min_doc_length
    max_doc_tokens: int = 131072  # < the target context length
    query_prompt: str = prompts.QUERY_PROMPT
    numbered_questions: bool = True  # parse "1: .. 4:" lists (released); False: one question per generation
    num_questions: int = 4  # released: chunks whose generation parses to another count are dropped (0 = any)
    phrases: tuple[str, ...] = prompts.PHRASES
    seed: int = 0
    filters: FilterConfig = FilterConfig()
    # Released: a turn is dropped when either answer is refused. True keeps turns whose *long*
    # answer y_L is a refusal: a model that cannot find the fact in the long context refuses,
    # and that is the failure the pair should teach away from (the tiny task's main one).
    keep_refused_rejected: bool = False


def _stable_seed(*parts) -> int:
    return zlib.crc32(json.dumps(parts).encode()) & 0x7FFFFFFF


class JsonlStage:
    """Append-only {"key": ..., ...} records: a folder of jsonl parts, one part per append (see module doc)."""

    PART = "part-{:06d}.jsonl"

    def __init__(self, path: str):
        self.path = path
        self.records: dict[str, dict] = {}
        self._parts = 0
        if storage.isdir(path):
            for name in storage.listdir(path):  # sorted: parts in write order
                if not (name.startswith("part-") and name.endswith(".jsonl")):
                    continue  # e.g. a temporary file left by a crash mid-write
                self._parts = max(self._parts, int(name[len("part-"):-len(".jsonl")]) + 1)
                for line in storage.read_text(storage.join(path, name)).splitlines():
                    if line.strip():
                        rec = json.loads(line)
                        self.records[rec["key"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def append(self, records: Sequence[dict]) -> None:
        if not records:
            return
        if distributed.is_primary():
            blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            storage.write_atomic(storage.join(self.path, self.PART.format(self._parts)), blob)
        self._parts += 1
        for r in records:
            self.records[r["key"]] = r


def run_stage(name: str, stage: JsonlStage, items: Sequence[dict], make_prompt: Callable[[dict], list[dict]],
              generator: TextGenerator, seed: int, finish: Callable[[dict, object], dict],
              progress: bool = True) -> None:
    """Generates for every item whose key is missing, batch by batch (fixed batches -> fixed seeds)."""
    bs = generator.batch_size
    todo = [i for i in range(0, len(items), bs) if any(it["key"] not in stage for it in items[i:i + bs])]
    missing = sum(it["key"] not in stage for it in items)
    if not missing:
        return
    logging.info("longpo data: %s: %d of %d items to generate", name, missing, len(items))
    bar = Progress(len(items), f"longpo {name}", "items", initial=len(items) - missing,
                   enabled=progress and distributed.is_primary())
    for start in todo:
        batch = [it for it in items[start:start + bs] if it["key"] not in stage]
        outs = generator([make_prompt(it) for it in batch], seed=_stable_seed(seed, name, start))
        stage.append([finish(it, out) for it, out in zip(batch, outs)])
        bar.update(len(batch))
    bar.close()


def select_documents(documents: Sequence[dict], count_tokens: Callable[[str], int], cfg: GenerationConfig):
    """Documents whose token count lies in [min_doc_tokens, max_doc_tokens] (and their counts)."""
    kept, lengths = [], {}
    for d in documents:
        n = count_tokens(d["text"])
        if cfg.min_doc_tokens <= n <= cfg.max_doc_tokens:
            kept.append(d)
            lengths[d["id"]] = n
    return kept, lengths


def _chunks(documents, count_tokens, cfg: GenerationConfig) -> list[dict]:
    out = []
    for d in documents:
        rng = np.random.default_rng(_stable_seed(cfg.seed, "chunks", d["id"]))
        for index, text in chunking.chunk_document(d["text"], count_tokens, rng, max_tokens=cfg.max_chunk_tokens,
                                                   min_tokens=cfg.min_chunk_tokens, max_chunks=cfg.max_chunks_per_doc):
            out.append({"key": f"{d['id']}#{index}", "doc_id": d["id"], "chunk_index": index, "chunk": text})
    return out


def _pick_question(item: dict, gen, cfg: GenerationConfig) -> dict:
    questions = prompts.extract_questions(gen.text, cfg.numbered_questions)
    ok = bool(questions) and (not cfg.numbered_questions or not cfg.num_questions
                              or len(questions) == cfg.num_questions)
    rng = np.random.default_rng(_stable_seed(cfg.seed, "question", item["key"]))
    question = questions[int(rng.integers(len(questions)))] if ok else None
    phrase = cfg.phrases[int(rng.integers(len(cfg.phrases)))] if cfg.phrases else ""
    return {**item, "generation": gen.text, "questions": questions, "question": question, "phrase": phrase}


def _answer(field: str):
    return lambda item, gen: {"key": item["key"], field: gen.text, f"{field}_truncated": gen.truncated}


def generate_samples(documents: Sequence[dict], out_dir: str, *, count_tokens: Callable[[str], int],
                     question_generator: TextGenerator, answer_generator: TextGenerator,
                     cfg: GenerationConfig, progress: bool = True) -> tuple[list[dict], dict]:
    """Runs (or resumes) every stage into out_dir; returns (samples, stats).

    A sample is the released intermediate format grouped per document:
    {"key", "doc_id", "prompt" (the whole document), "short_prompts" [chunk per turn],
     "questions" [phrase + question per turn], "chosens" [y_S], "rejecteds" [y_L]}.
    """
    samples_path, stats_path = storage.join(out_dir, "samples.jsonl"), storage.join(out_dir, "stats.json")
    if storage.exists(samples_path) and storage.exists(stats_path):
        return load_samples(samples_path), json.loads(storage.read_text(stats_path))
    docs, lengths = select_documents(documents, count_tokens, cfg)
    by_id = {d["id"]: d for d in docs}
    stats = {"documents": len(documents), "documents_in_length_range": len(docs)}

    chunks = JsonlStage(storage.join(out_dir, "chunks"))
    if not chunks.records:
        chunks.append(_chunks(docs, count_tokens, cfg))
    items = list(chunks.records.values())
    stats["chunks"] = len(items)

    questions = JsonlStage(storage.join(out_dir, "questions"))
    run_stage("questions", questions, items, lambda it: prompts.instruction_prompt(it["chunk"], cfg.query_prompt),
              question_generator, cfg.seed, lambda it, g: _pick_question(it, g, cfg), progress)
    asked = [questions.records[it["key"]] for it in items if questions.records[it["key"]]["question"]]
    stats["questions"] = len(asked)

    chosen = JsonlStage(storage.join(out_dir, "chosen"))
    run_stage("chosen", chosen, asked,
              lambda it: prompts.answer_prompt(it["chunk"], it["phrase"], it["question"]),
              answer_generator, cfg.seed, _answer("chosen"), progress)
    drops: dict[str, int] = {}
    per_doc: dict[str, list[dict]] = {}
    for it in asked:
        c = chosen.records[it["key"]]
        why = answer_problem(c["chosen"], c["chosen_truncated"], cfg.filters)
        if why:
            drops[f"chosen_{why}"] = drops.get(f"chosen_{why}", 0) + 1
            continue
        per_doc.setdefault(it["doc_id"], []).append({**it, "chosen": c["chosen"]})
    turns = []
    for doc_id, doc_turns in per_doc.items():  # released: sample_by_prompt_id(..., 2) before the long answers
        rng = np.random.default_rng(_stable_seed(cfg.seed, "turns", doc_id))
        if len(doc_turns) > cfg.turns_per_doc:
            keep = sorted(rng.choice(len(doc_turns), cfg.turns_per_doc, replace=False).tolist())
            doc_turns = [doc_turns[i] for i in keep]
        turns.extend(doc_turns)

    rejected = JsonlStage(storage.join(out_dir, "rejected"))
    run_stage("rejected", rejected, turns,
              lambda it: prompts.answer_prompt(by_id[it["doc_id"]]["text"], it["phrase"], it["question"]),
              answer_generator, cfg.seed, _answer("rejected"), progress)
    grouped: dict[str, list[dict]] = {}
    for it in turns:
        r = rejected.records[it["key"]]
        why = answer_problem(r["rejected"], r["rejected_truncated"], cfg.filters)
        if why == "refused" and cfg.keep_refused_rejected:
            why = None
        if why:
            drops[f"rejected_{why}"] = drops.get(f"rejected_{why}", 0) + 1
            continue
        grouped.setdefault(it["doc_id"], []).append({**it, "rejected": r["rejected"]})
    samples = []
    for doc_id in sorted(grouped):
        ts = sorted(grouped[doc_id], key=lambda t: t["chunk_index"])
        if len(ts) < cfg.min_turns:
            drops["doc_too_few_turns"] = drops.get("doc_too_few_turns", 0) + 1
            continue
        samples.append({"key": doc_id, "doc_id": doc_id, "prompt": by_id[doc_id]["text"],
                        "doc_tokens": lengths[doc_id], "short_prompts": [t["chunk"] for t in ts],
                        "questions": [f"{t['phrase']} {t['question']}".strip() for t in ts],
                        "chosens": [t["chosen"] for t in ts], "rejecteds": [t["rejected"] for t in ts]})
    stats.update(turns=len(turns), samples=len(samples), turns_in_samples=sum(len(s["chosens"]) for s in samples),
                 dropped=drops)
    if distributed.is_primary():  # stats.json last: both files present marks a finished round
        storage.write_atomic(samples_path, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        storage.write_atomic(stats_path, json.dumps(stats, indent=1, sort_keys=True))
    distributed.barrier(f"longpo_samples:{out_dir}")
    return load_samples(samples_path), stats


SAMPLE_FIELDS = ("prompt", "short_prompts", "questions", "chosens", "rejecteds")


def load_samples(path: str) -> list[dict]:
    """samples.jsonl, validated: every turn list has the same nonzero length (errors name line and field)."""
    from mm_rlhf_jax.data.errors import DataError, Where

    out = []
    with storage.open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = Where(path, n)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(where, "<line>", f"not valid JSON ({e})") from None
            for field in SAMPLE_FIELDS:
                if field not in rec:
                    raise DataError(where, field, "missing")
            if not isinstance(rec["prompt"], str) or not rec["prompt"]:
                raise DataError(where, "prompt", "must be a non-empty string (the long document)")
            k = len(rec["questions"])
            if k == 0:
                raise DataError(where, "questions", "a sample needs at least one turn")
            for field in SAMPLE_FIELDS[1:]:
                if not isinstance(rec[field], list) or len(rec[field]) != k:
                    raise DataError(where, field, f"must be a list of {k} strings (one per turn), got "
                                                  f"{type(rec[field]).__name__} of length "
                                                  f"{len(rec[field]) if isinstance(rec[field], list) else '-'}")
                if not all(isinstance(x, str) for x in rec[field]):
                    raise DataError(where, field, "every entry must be a string")
            rec["where"] = [path, n]
            out.append(rec)
    return out
