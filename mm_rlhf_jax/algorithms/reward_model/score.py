"""Scoring a pair file with a trained reward model, streamed and resumable: each pair's margin `delta`.

    result = score_file(inference, params, config.score, critique=True, workdir=workdir)
    result.path          # <input>_scored.jsonl (or score.output): every input line plus the RM's fields

The pass, for a file of any size (120K pairs for the MM-RLHF release):

1. check: every line parsed (records.py: errors name file, line, field) and
   its media checked by header, once per path, remembered in the workdir's
   media_check.json (validation.MediaChecker); this also counts the pairs.
2. score: the file is read again line by line in global batches of
   G = inference.batch_size pairs (the last padded with repeats); every
   process reads the G lines (text only) and encodes only its host slot of
   them (RewardModelInference.score_batch: critiques through the one
   Generator, prompts and scoring sequences in a few fixed length buckets),
   and every process gets the whole batch's rewards and critiques back.
   Host memory holds one batch of encoded rows and one part of output lines,
   whatever the file's size; nothing keeps a list of all records.
3. write: process 0 writes the rows of every `score.part_batches` batches as
   one part file <output>.parts/part-<first>-<stop>.jsonl (atomically), then
   records it in <output>.parts/manifest.json. A rerun (after SIGTERM, SIGKILL,
   a lost host) reads the manifest and starts after its last finished part, so
   finished batches are never scored again; the manifest also holds the
   identity of the input (path, size, mtime), of the batching and of the model
   (the caller's `identity`), and parts of another identity are discarded.
   After the last part, process 0 concatenates the parts in order into the
   output (streamed, atomically), marks the manifest complete and removes the
   parts; a rerun of a complete pass returns at once.

Added to each row: delta = chosen_reward - rejected_reward (the margin MM-DPO's
dynamic beta reads), both rewards, the generated critiques (critique mode), and
source_delta (an input's own delta, when it had one).
"""

import dataclasses
import json
import logging
import posixpath
from typing import Iterator

import numpy as np

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.algorithms.reward_model.inference import RewardModelInference
from mm_rlhf_jax.data.errors import DataError, Where
from mm_rlhf_jax.data.records import parse_pair
from mm_rlhf_jax.data.validation import MediaChecker
from mm_rlhf_jax.progress import Progress
from mm_rlhf_jax.sharding import placement
from mm_rlhf_jax.train import pair_data

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    path: str  # the scored file
    pairs: int  # pairs in it
    batches: int  # global batches of the pass
    scored_batches: int  # batches this call scored (the rest came from finished parts of an earlier call)


def output_path(s) -> str:
    return s.output or posixpath.splitext(s.input)[0] + "_scored.jsonl"  # string-only: URLs stay intact


def parts_dir(output: str) -> str:
    return output + ".parts"


def _lines(path: str) -> Iterator[tuple[Where, str]]:
    """(Where, text) of every non-blank line, read one at a time."""
    with storage.open(path) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield Where(str(path), lineno), line


def _parse(where: Where, line: str) -> dict:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(where, "<json>", f"invalid JSON: {e.msg} at column {e.colno}") from None


def check_input(path: str, media_root: str, media_cache: str | None) -> int:
    """Pairs in the file, every line parsed and its media checked (see the module docstring, 1)."""
    checker = MediaChecker(media_cache)
    n = 0
    with Progress(None, f"check {storage.basename(path)}", "pairs", interval_s=30) as bar:
        for where, line in _lines(path):
            checker.check(parse_pair(_parse(where, line), where), media_root)
            n += 1
            bar.update(1)
    checker.save()
    if n == 0:
        raise ValueError(f"{path}: no pairs to score")
    return n


def _batches(path: str, size: int, start: int) -> Iterator[tuple[int, list[tuple[Where, str]]]]:
    """(batch index, its lines) from batch `start` on; earlier batches' lines are read, not parsed."""
    chunk, index = [], 0
    for item in _lines(path):
        chunk.append(item)
        if len(chunk) == size:
            if index >= start:
                yield index, chunk
            chunk, index = [], index + 1
    if chunk and index >= start:
        yield index, chunk


def scored_row(obj: dict, rewards, critiques) -> dict:
    """The input line's object (every field kept) plus the RM's fields."""
    row = dict(obj)
    if "delta" in row:  # a margin from elsewhere (e.g. annotator scores): kept, but delta is now ours
        row["source_delta"] = row["delta"]
    rc, rr = float(rewards[0]), float(rewards[1])
    row.update(delta=rc - rr, chosen_reward=rc, rejected_reward=rr)
    if critiques is not None:
        row["chosen_generated_critique"], row["rejected_generated_critique"] = critiques
    return row


class Manifest:
    """<output>.parts/manifest.json: {identity, parts: [{file, first, stop, pairs}], complete}; process 0's."""

    def __init__(self, folder: str, identity: dict, output: str):
        self.folder, self.path = folder, storage.join(folder, MANIFEST)
        self.identity, self.parts, self.complete = identity, [], False
        if storage.exists(self.path):
            saved = json.loads(storage.read_text(self.path))
            if saved.get("identity") != identity:
                logging.warning("%s was written for another input or model (%s); scoring from the start",
                                self.path, saved.get("identity"))
                storage.remove(folder)
            elif saved.get("complete") and not storage.exists(output):  # the output was deleted since
                storage.remove(folder)
            else:
                self.parts, self.complete = saved["parts"], saved.get("complete", False)

    @property
    def next_batch(self) -> int:
        return self.parts[-1]["stop"] if self.parts else 0

    def save(self) -> None:
        storage.write_atomic(self.path, json.dumps({"identity": self.identity, "parts": self.parts,
                                                    "complete": self.complete}, indent=1))

    def add_part(self, first: int, stop: int, lines: list[str]) -> None:
        name = f"part-{first:08d}-{stop:08d}.jsonl"
        storage.write_atomic(storage.join(self.folder, name), "".join(lines))  # the part, then its record
        self.parts.append({"file": name, "first": first, "stop": stop, "pairs": len(lines)})
        self.save()

    def finish(self, output: str) -> None:
        """The parts, in order, as the output (streamed); then complete, and the parts removed."""
        storage.write_atomic_chunks(output, (storage.read_text(storage.join(self.folder, p["file"]))
                                             for p in self.parts))
        self.complete = True
        self.save()
        for p in self.parts:
            storage.remove(storage.join(self.folder, p["file"]))


def score_file(inference: RewardModelInference, params, s, *, critique: bool, workdir: str | None = None,
               identity: dict | None = None, media_root: str = "") -> ScoreResult:
    """Scores every pair of s.input (the `score` block) into output_path(s); see the module docstring.

    workdir: where the media check cache lives (None: no cache). identity: what
    makes the scores (e.g. the RM's config and step); parts written under another
    identity are discarded. media_root: where media paths resolve when
    s.media_root is unset (the run's data.media_root; "" = the input's folder).
    """
    media_root = s.media_root or media_root or storage.dirname(s.input)
    out, size = output_path(s), inference.batch_size
    cache = pair_data.media_cache_path(workdir) if workdir else None
    n = check_input(s.input, media_root, cache)
    batches = -(-n // size)
    in_size, in_mtime = storage.stat(s.input)
    ident = dict(input=storage.absolute(s.input), size=in_size, mtime=in_mtime, pairs=n, batch_size=size,
                 part_batches=s.part_batches, critique=critique, media_root=media_root, **(identity or {}))
    manifest = Manifest(parts_dir(out), ident, out) if distributed.is_primary() else None
    done = manifest.complete if manifest else False
    start, done = placement.from_primary(np.array([manifest.next_batch if manifest else 0, done], np.int64))
    if done:
        logging.info("%s is already complete (%d pairs)", out, n)
        return ScoreResult(out, n, batches, 0)
    if start:
        logging.info("scoring %s: resuming after %d of %d batches", s.input, start, batches)
    bound = inference.bind(params, generate=critique)
    part, first, scored = [], int(start), 0
    with Progress(n, "score", "pairs", initial=min(int(start) * size, n)) as bar:
        for index, lines in _batches(s.input, size, int(start)):
            objs = [_parse(w, line) for w, line in lines]
            records = [parse_pair(o, w) for o, (w, _) in zip(objs, lines)]
            records += [records[0]] * (size - len(records))  # static shapes: pad with a repeat
            rewards, crit = inference.score_batch(bound, records, media_root=media_root, generate=critique,
                                                  fold=index)
            scored += 1
            if manifest is not None:
                for i, obj in enumerate(objs):
                    c = (crit[0][i], crit[1][i]) if crit is not None else None
                    part.append(json.dumps(scored_row(obj, rewards[i], c), ensure_ascii=False) + "\n")
                if index + 1 - first >= s.part_batches or index + 1 == batches:
                    manifest.add_part(first, index + 1, part)
                    part, first = [], index + 1
            bar.update(len(objs))
    if manifest is not None:
        manifest.finish(out)
    distributed.barrier("score_file")
    logging.info("wrote %d scored pairs to %s (%d batches scored now, %d from earlier parts)", n, out, scored,
                 batches - scored)
    return ScoreResult(out, n, batches, scored)
