"""Hybrid reward routing by prompt domain (ByteDance RLHF, papers.md §2(a)).

Each (record, response) gets its reward from the first source in `order` that
applies to the record:

  verifier            the record's domain maps to a registered verifier (VERIFIERS) and
                      the record holds the field that verifier checks against
                      (VERIFIER_FIELDS: math -> ground_truth, code -> unit_tests)   {0, 1}
  genrm_ground_truth  the record has a ground_truth: GenRM(x, y, ground truth)     [0, 1]
  genrm_reference     the record has a reference answer: GenRM(x, y, reference)    [0, 1]
  genrm_best_of_n     the record has neither: GenRM(x, y, best-of-N reference), the
                      reference generated once per prompt and cached
                      (rewards/references.py; the paper's "SFT best-of-N by BT")  [0, 1]
  learned_rm          any record: the learned reward model r(x, y) (critique or
                      scalar RM; algorithms/reward_model/scorer.py)               R

The default order is the paper's ranking of resistance to reward hacking (RTV,
then GenRM with ground truth, then GenRM with a best-of-N reference), with the
learned RM as the last resort: when one is configured and not in `order`, it
is appended, so a prompt no other source applies to falls through to it. A
record no source applies to is an error naming it, each source tried and why
that source was unavailable. How the paper mixes sources in one batch is not
published (papers.md §2(g).4); here every source is mapped as
`scale * r + shift` (config, default identity), which keeps RTV and GenRM on
the same [0, 1] scale (a learned RM's scale is its own: set its transform).

Verifier calls are cached by (verifier, response, reference) and run on a
thread pool (the code sandbox spends its time in a child process). Every
source scores its records in one batched call per router call.
"""

import concurrent.futures
import dataclasses
import functools
from typing import Mapping, Sequence

import numpy as np

from mm_rlhf_jax.data.prompts_pool import PromptRecord
from mm_rlhf_jax.registry import Registry
from mm_rlhf_jax.rewards.verifiers import VERIFIERS

# Verifier name -> the PromptRecord field holding its reference.
VERIFIER_FIELDS: Registry[str] = Registry("verifier reference field")
VERIFIER_FIELDS.register("math")("ground_truth")
VERIFIER_FIELDS.register("code")("unit_tests")

DEFAULT_ORDER = ("verifier", "genrm_ground_truth", "genrm_reference", "genrm_best_of_n")
FALLBACK = "learned_rm"  # appended to any order when a learned RM is configured


@dataclasses.dataclass
class RewardBatch:
    rewards: np.ndarray  # f32[N] after the per-source scale/shift
    routes: list[str]  # the source that scored each sample
    valid: np.ndarray  # bool[N]: False where a GenRM output was unparsable (reward = its failure value)
    details: list | None = None  # optional per-sample text for sample logs (Align-Pro: the frozen answer)


@dataclasses.dataclass
class RewardContext:
    """What the sources may use; absent resources make their sources never apply."""

    verifiers: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"math": "math", "code": "code"})
    genrm: object | None = None  # rewards.genrm.GenRM
    # rewards.references.BestOfNReferences: covers(rec) -> bool, lookup(records) -> list[str]
    references: object | None = None
    # score(prompts, responses) -> (f32[N], bool[N]) (algorithms/reward_model/scorer.LearnedRM)
    learned_rm: object | None = None
    num_workers: int = 2  # verifier threads
    cache_size: int = 65536


class VerifierSource:
    def __init__(self, ctx: RewardContext):
        for domain, name in ctx.verifiers.items():
            VERIFIERS.get(name)  # unknown names fail at construction, not mid-run
            VERIFIER_FIELDS.get(name)
        self.ctx = ctx
        self.unavailable = None if ctx.verifiers else "no verifiers configured"
        self._call = functools.lru_cache(maxsize=ctx.cache_size)(lambda name, y, ref: VERIFIERS.get(name)(y, ref))

    def applies(self, rec: PromptRecord) -> bool:
        name = self.ctx.verifiers.get(rec.domain)
        return name is not None and getattr(rec, VERIFIER_FIELDS.get(name)) is not None

    def score(self, recs, responses):
        jobs = [(self.ctx.verifiers[r.domain], y, getattr(r, VERIFIER_FIELDS.get(self.ctx.verifiers[r.domain])))
                for r, y in zip(recs, responses)]
        if self.ctx.num_workers > 1 and len(jobs) > 1:
            with concurrent.futures.ThreadPoolExecutor(self.ctx.num_workers) as pool:
                out = list(pool.map(lambda j: self._call(*j), jobs))
        else:
            out = [self._call(*j) for j in jobs]
        return np.asarray(out, np.float32), np.ones(len(out), bool)


class _GenRMSource:
    field = ""

    def __init__(self, ctx: RewardContext):
        self.genrm = ctx.genrm
        self.unavailable = None if ctx.genrm is not None else "no GenRM configured (genrm.enabled)"

    def applies(self, rec: PromptRecord) -> bool:
        return self.genrm is not None and getattr(rec, self.field) is not None

    def score(self, recs, responses):
        out = self.genrm.score([r.prompt for r in recs], list(responses), [getattr(r, self.field) for r in recs])
        return out.scores, out.valid


class GenRMGroundTruthSource(_GenRMSource):
    field = "ground_truth"


class GenRMReferenceSource(_GenRMSource):
    field = "reference"


class GenRMBestOfNSource:
    """GenRM against a generated best-of-N reference, for records with no ground truth and no reference."""

    def __init__(self, ctx: RewardContext):
        self.genrm, self.references = ctx.genrm, ctx.references
        self.unavailable = ("no GenRM configured (genrm.enabled)" if ctx.genrm is None else
                            "no best-of-N references configured (genrm.best_of_n.enabled)"
                            if ctx.references is None else None)

    def applies(self, rec: PromptRecord) -> bool:
        return self.unavailable is None and self.references.covers(rec)

    def score(self, recs, responses):
        out = self.genrm.score([r.prompt for r in recs], list(responses), self.references.lookup(recs))
        return out.scores, out.valid


class LearnedRMSource:
    """The learned reward model on any record (the router's fall-through)."""

    def __init__(self, ctx: RewardContext):
        self.rm = ctx.learned_rm
        self.unavailable = None if ctx.learned_rm is not None else "no learned RM configured (reward.learned_rm)"

    def applies(self, rec: PromptRecord) -> bool:
        return self.rm is not None

    def score(self, recs, responses):
        return self.rm.score([r.prompt for r in recs], list(responses))


REWARD_SOURCES: Registry = Registry("reward source")
REWARD_SOURCES.register("verifier")(VerifierSource)
REWARD_SOURCES.register("genrm_ground_truth")(GenRMGroundTruthSource)
REWARD_SOURCES.register("genrm_reference")(GenRMReferenceSource)
REWARD_SOURCES.register("genrm_best_of_n")(GenRMBestOfNSource)
REWARD_SOURCES.register(FALLBACK)(LearnedRMSource)


class RewardRouter:
    """router(records, responses) -> RewardBatch; see the module docstring."""

    def __init__(self, ctx: RewardContext, order: Sequence[str] = DEFAULT_ORDER,
                 transforms: Mapping[str, tuple[float, float]] | None = None, *, fallback: bool = True):
        if not order:
            raise ValueError("the reward router needs at least one source")
        self.ctx, self.order = ctx, tuple(order)
        if fallback and ctx.learned_rm is not None and FALLBACK not in self.order:
            self.order += (FALLBACK,)  # the fall-through: prompts no earlier source applies to
        self.sources = {name: REWARD_SOURCES.get(name)(ctx) for name in self.order}
        self.transforms = dict(transforms or {})
        unknown = set(self.transforms) - set(self.order)
        if unknown:
            raise ValueError(f"reward transforms for sources not in the order {self.order}: {sorted(unknown)}")

    def restricted(self, order: Sequence[str]) -> "RewardRouter":
        """A router over the same models with only `order` (no fall-through): e.g. Pre-PPO's scorer."""
        return RewardRouter(self.ctx, order, {k: v for k, v in self.transforms.items() if k in order},
                            fallback=False)

    def route(self, rec: PromptRecord) -> str:
        for name in self.order:
            if self.sources[name].applies(rec):
                return name
        tried = ", ".join(name + (f" ({self.sources[name].unavailable})" if self.sources[name].unavailable else "")
                          for name in self.order)
        raise ValueError(f"no reward source applies to record {rec.id!r} ({rec.where}, domain {rec.domain!r}, "
                         f"prompt {rec.prompt[:60]!r}): sources tried: {tried}; give it a ground_truth / unit_tests "
                         "/ reference or a verifier for its domain, or configure a learned reward model "
                         "(reward.learned_rm) to score every prompt the other sources do not")

    def check(self, records: Sequence[PromptRecord]) -> dict[str, int]:
        """Routes every record up front (fails before any sampling); returns the count per route."""
        counts: dict[str, int] = {}
        for r in records:
            name = self.route(r)
            counts[name] = counts.get(name, 0) + 1
        return counts

    def check_by_domain(self, records: Sequence[PromptRecord]) -> dict[str, dict[str, int]]:
        """{domain: {source: records}}: the route of every record, counted per domain (reports)."""
        return route_counts([self.route(r) for r in records], records)

    def __call__(self, records: Sequence[PromptRecord], responses: Sequence[str]) -> RewardBatch:
        if len(records) != len(responses):
            raise ValueError(f"{len(records)} records but {len(responses)} responses")
        routes = [self.route(r) for r in records]
        rewards = np.zeros(len(records), np.float32)
        valid = np.ones(len(records), bool)
        for name in self.order:
            idx = [i for i, rt in enumerate(routes) if rt == name]
            if not idx:
                continue
            s, v = self.sources[name].score([records[i] for i in idx], [responses[i] for i in idx])
            scale, shift = self.transforms.get(name, (1.0, 0.0))
            rewards[idx] = scale * np.asarray(s, np.float32) + shift
            valid[idx] = v
        return RewardBatch(rewards=rewards, routes=routes, valid=valid)


def route_counts(routes: Sequence[str], records: Sequence[PromptRecord]) -> dict[str, dict[str, int]]:
    """{domain: {source: samples that source scored}}: which source scored each domain."""
    out: dict[str, dict[str, int]] = {}
    for rec, route in zip(records, routes):
        per = out.setdefault(rec.domain, {})
        per[route] = per.get(route, 0) + 1
    return {d: dict(sorted(v.items())) for d, v in sorted(out.items())}


def reward_metrics(batch: RewardBatch, records: Sequence[PromptRecord], prefix: str = "reward") -> dict[str, float]:
    """Mean reward overall, per domain and per route, the invalid (unparsable) fraction, and the routing:
    `{prefix}/routes/<domain>/<source>` = samples of that domain the source scored."""
    out = {f"{prefix}/mean": float(batch.rewards.mean()) if len(batch.rewards) else 0.0,
           f"{prefix}/invalid_fraction": float(1.0 - batch.valid.mean()) if len(batch.valid) else 0.0}
    for key, values in (("domain", [r.domain for r in records]), ("route", batch.routes)):
        for v in sorted(set(values)):
            sel = np.array([x == v for x in values])
            out[f"{prefix}/{key}/{v}"] = float(batch.rewards[sel].mean())
    for domain, per in route_counts(batch.routes, records).items():
        for source, n in per.items():
            out[f"{prefix}/routes/{domain}/{source}"] = float(n)
    return out
