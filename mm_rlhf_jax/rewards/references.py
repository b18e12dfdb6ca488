"""Best-of-N GenRM references for prompts without ground truth (ByteDance RLHF, papers.md §2(a)).

    candidates(x) = N samples of a generator (the initial SFT policy, or a reference model)
    y_ref(x)      = argmax_{y in candidates(x)} RM(x, y)        (the paper: the SFT best-of-N picked by BT)

The GenRM then judges a policy response against y_ref(x) (router source
`genrm_best_of_n`). A reference is computed once per prompt and cached in
`cache_dir` (the run's workdir), one JSON file per key:

    key = sha256({"prompt": x, **fingerprint})[:32]     fingerprint: generator, N, seed, ...
    <cache_dir>/<key>.json = {"prompt", "reference", "candidates", "scores", "fingerprint"}

so a resumed run (or a later run with the same generator settings) reuses it,
and a change of generator, N or seed never reads a stale reference.

Multi-process: generation and scoring are collective (every process calls
lookup with the same records). Which keys are missing is decided by process 0
(placement.from_primary), so processes that see the shared workdir at
slightly different times still generate the same batches; process 0 writes.
"""

import hashlib
import json
from typing import Callable, Sequence

import numpy as np

from mm_rlhf_jax import distributed, storage
from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.sharding import placement

# generate(records, n) -> len(records) lists of n response texts
Generate = Callable[[list[PromptRecord], int], list[list[str]]]
# pick(prompts, responses) -> (scores f32[M], valid bool[M]): the scorer that ranks the candidates
Pick = Callable[[list[str], list[str]], tuple[np.ndarray, np.ndarray]]


def needs_reference(rec: PromptRecord) -> bool:
    """A prompt the GenRM has nothing to compare with: no ground truth and no reference answer."""
    return rec.ground_truth is None and rec.reference is None


class BestOfNReferences:
    """Cached best-of-N references; see the module docstring.

    generate / pick: as the aliases above; num_candidates: N; cache_dir: where
    the JSON files go ("" = memory only); fingerprint: what besides the prompt
    determines a reference (generator identity, N, seed, sampling); domains:
    the domains covered (empty = all).
    """

    def __init__(self, generate: Generate, pick: Pick, *, num_candidates: int, cache_dir: str,
                 fingerprint: dict, domains: Sequence[str] = ()):
        if num_candidates < 1:
            raise ValueError(f"best-of-N needs num_candidates >= 1, got {num_candidates}")
        self.generate, self.pick, self.n = generate, pick, num_candidates
        self.cache_dir, self.domains = cache_dir, tuple(domains)
        self.fingerprint = {**fingerprint, "num_candidates": num_candidates}
        self._memory: dict[str, dict] = {}
        self.hits = self.misses = 0  # cache statistics (tests, logs)

    def covers(self, rec: PromptRecord) -> bool:
        return needs_reference(rec) and (not self.domains or rec.domain in self.domains)

    def key(self, rec: PromptRecord) -> str:
        blob = json.dumps({"prompt": rec.prompt, **self.fingerprint}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]

    def _path(self, key: str) -> str:
        return storage.join(self.cache_dir, f"{key}.json")

    def _read(self, key: str) -> dict | None:
        if not self.cache_dir or not storage.exists(self._path(key)):
            return None
        return json.loads(storage.read_text(self._path(key)))

    def lookup(self, records: Sequence[PromptRecord]) -> list[str]:
        """The reference of every record (generated, scored and cached where missing)."""
        keys = [self.key(r) for r in records]
        todo = {}  # key -> first record with it, in order
        for k, r in zip(keys, records):
            if k not in self._memory and k not in todo:
                todo[k] = r
        if todo:
            found = {k: self._read(k) for k in todo}
            missing = placement.from_primary(np.array([found[k] is None for k in todo], bool))
            for (k, _), miss in zip(list(todo.items()), missing):
                if not miss and found[k] is not None:
                    self._memory[k] = found[k]
                    self.hits += 1
            self._build([todo[k] for k, miss in zip(list(todo), missing) if miss or found[k] is None])
        return [self._memory[k]["reference"] for k in keys]

    def _build(self, records: list[PromptRecord]) -> None:
        if not records:
            return
        self.misses += len(records)
        cands = self.generate(records, self.n)
        if len(cands) != len(records) or any(len(c) != self.n for c in cands):
            raise ValueError(f"best-of-N generate returned {[len(c) for c in cands][:8]}... candidates for "
                             f"{len(records)} prompts; expected {self.n} each")
        flat_p = [r.prompt for r in records for _ in range(self.n)]
        flat_y = [y for c in cands for y in c]
        scores, valid = self.pick(flat_p, flat_y)
        # An invalid score (a candidate the RM could not read) never wins.
        scores = np.where(np.asarray(valid, bool), np.asarray(scores, np.float64), -np.inf).reshape(len(records),
                                                                                                   self.n)
        best = placement.from_primary(np.argmax(scores, axis=-1).astype(np.int32))  # first on ties
        for rec, c, s, b in zip(records, cands, scores, best):
            entry = {"prompt": rec.prompt, "reference": c[int(b)], "candidates": list(c),
                     "scores": [float(v) for v in s], "fingerprint": self.fingerprint}
            key = self.key(rec)
            self._memory[key] = entry
            if self.cache_dir and distributed.is_primary():
                storage.write_atomic(self._path(key), json.dumps(entry, ensure_ascii=False))
